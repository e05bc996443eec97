# Writes a C source that defines the bytes of a file as an array, so a file can be built
# into the binary with nothing but CMake (no xxd, no network):
#   cmake -DIN=page.html -DOUT=page_html.c -DNAME=symbol -DHEADER=dir/decl.h -P embed.cmake
# defines `const unsigned char NAME[]` (the bytes plus a NUL) and `const size_t NAME_len`.
file(READ "${IN}" hex HEX)
string(LENGTH "${hex}" digits)
math(EXPR len "${digits} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REPEAT "0x[0-9a-f][0-9a-f]," 16 line) # CMake's regex has no {16}
string(REGEX REPLACE "(${line})" "\\1\n" bytes "${bytes}")
file(WRITE "${OUT}.tmp"
  "/* Generated from ${IN} by scripts/embed.cmake: do not edit. */\n"
  "#include \"${HEADER}\"\n\n"
  "const unsigned char ${NAME}[] = {\n${bytes}0x00};\n"
  "const size_t ${NAME}_len = ${len};\n")
file(RENAME "${OUT}.tmp" "${OUT}")
