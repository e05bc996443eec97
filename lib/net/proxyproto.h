/* proxyproto: PROXY protocol headers (HAProxy's "The PROXY protocol", versions 1 and 2)
 * telling a TCP service who the real client is, and the "ip:port" address format of the
 * piko-client-addr field (PROTOCOL.md 1.4). */
#ifndef PK_PROXYPROTO_H
#define PK_PROXYPROTO_H

#include <sys/socket.h>

struct evbuffer;

/* Appends a PROXY protocol header describing a TCP connection from src to dst.
 *
 * Both AF_INET or both AF_INET6: v1 "PROXY TCP4 <src> <dst> <sport> <dport>\r\n" (TCP6 for
 * IPv6); v2 the 16-byte preamble (signature, 0x21 = version 2 + PROXY, 0x11 = TCP over
 * IPv4 or 0x21 = TCP over IPv6, the address block length in network order) and the
 * addresses and ports in network order. When one address is IPv4 and the other an
 * IPv4-mapped IPv6 address, the mapped one is used as IPv4. Any other mix, another family
 * or a NULL address: v1 "PROXY UNKNOWN\r\n", v2 the LOCAL command with no addresses
 * (0x20, 0x00, length 0), which tells the receiver to use the connection's own addresses.
 *
 * Returns 0, or PK_ERR_INVALID when out is NULL. */
int pk_proxyproto_v1(struct evbuffer *out, const struct sockaddr *src, const struct sockaddr *dst);
int pk_proxyproto_v2(struct evbuffer *out, const struct sockaddr *src, const struct sockaddr *dst);

/* Parses "ip:port" (dotted IPv4) or "[ipv6]:port" (RFC 3986 authority form, as in
 * piko-client-addr) into ss, and its size into len (len may be NULL). Only numeric
 * addresses, no zone id, a decimal port 0-65535 without sign or spaces, at most 63
 * characters. Returns 0, or PK_ERR_INVALID (ss is then unspecified). */
int pk_parse_addr_port(const char *s, struct sockaddr_storage *ss, socklen_t *len);

#endif
