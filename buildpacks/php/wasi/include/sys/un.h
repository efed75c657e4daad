/* wasi-libc's sockaddr_un has no sun_path (WASI has no Unix sockets); PHP's sources fill it
 * in before the socket call, which then fails. */
#ifndef SKIFF_WASI_SYS_UN_H
#define SKIFF_WASI_SYS_UN_H
#include <sys/socket.h>
#define __wasilibc___struct_sockaddr_un_h
struct sockaddr_un {
	sa_family_t sun_family;
	char sun_path[108];
};
#endif
