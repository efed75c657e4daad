/* Declarations PHP's sources use that WASI (preview 1, wasi-libc) does not have: processes,
 * users and groups, permissions, syslog, Unix sockets. Skiff's php-cgi is one process per
 * request in a sandbox, so the calls are stubbed in skiff_wasi.c and fail with ENOSYS (or
 * report a single user); PHP reports the failure like on any host that refuses them. */
#ifndef SKIFF_WASI_COMPAT_H
#define SKIFF_WASI_COMPAT_H
#include <sys/types.h>
#include <stdio.h>

/* processes */
FILE *popen(const char *command, const char *mode);
int pclose(FILE *stream);
pid_t fork(void);
pid_t wait(int *status);
pid_t waitpid(pid_t pid, int *status, int options);
pid_t setsid(void);
pid_t getpgrp(void);
pid_t getppid(void);
int kill(pid_t pid, int sig);
int dup(int fd);
int dup2(int fd, int fd2);
int getdtablesize(void);

/* users, groups and permissions */
uid_t getuid(void);
uid_t geteuid(void);
gid_t getgid(void);
gid_t getegid(void);
int getgroups(int size, gid_t list[]);
int chmod(const char *path, mode_t mode);
int fchmod(int fd, mode_t mode);
int chown(const char *path, uid_t owner, gid_t group);
int lchown(const char *path, uid_t owner, gid_t group);
mode_t umask(mode_t mask);
struct passwd {
	char *pw_name;
	char *pw_passwd;
	uid_t pw_uid;
	gid_t pw_gid;
	char *pw_gecos;
	char *pw_dir;
	char *pw_shell;
};
struct group {
	char *gr_name;
	char *gr_passwd;
	gid_t gr_gid;
	char **gr_mem;
};
struct passwd *getpwuid(uid_t uid);
struct passwd *getpwnam(const char *name);
struct group *getgrnam(const char *name);
struct group *getgrgid(gid_t gid);

/* signals: wasi-libc leaves sigaction out */
#ifndef SA_RESTART
#define SA_RESTART 0x10000000
#endif

/* syslog */
#define LOG_EMERG 0
#define LOG_ALERT 1
#define LOG_CRIT 2
#define LOG_ERR 3
#define LOG_WARNING 4
#define LOG_NOTICE 5
#define LOG_INFO 6
#define LOG_DEBUG 7
#define LOG_PID 0x01
#define LOG_CONS 0x02
#define LOG_NDELAY 0x08
#define LOG_ODELAY 0x04
#define LOG_NOWAIT 0x10
#define LOG_PERROR 0x20
#define LOG_KERN (0 << 3)
#define LOG_USER (1 << 3)
#define LOG_MAIL (2 << 3)
#define LOG_DAEMON (3 << 3)
#define LOG_AUTH (4 << 3)
#define LOG_SYSLOG (5 << 3)
#define LOG_LPR (6 << 3)
#define LOG_NEWS (7 << 3)
#define LOG_UUCP (8 << 3)
#define LOG_CRON (9 << 3)
#define LOG_AUTHPRIV (10 << 3)
#define LOG_LOCAL0 (16 << 3)
#define LOG_LOCAL1 (17 << 3)
#define LOG_LOCAL2 (18 << 3)
#define LOG_LOCAL3 (19 << 3)
#define LOG_LOCAL4 (20 << 3)
#define LOG_LOCAL5 (21 << 3)
#define LOG_LOCAL6 (22 << 3)
#define LOG_LOCAL7 (23 << 3)
void openlog(const char *ident, int option, int facility);
void syslog(int priority, const char *format, ...);
void closelog(void);

/* advisory locks */
#ifndef F_RDLCK
#define F_RDLCK 0
#define F_WRLCK 1
#define F_UNLCK 2
#endif
#ifndef F_SETLK
#define F_GETLK 5
#define F_SETLK 6
#define F_SETLKW 7
#endif

/* sockets beyond what WASI preview 1 offers */
#ifndef PF_UNIX
#define PF_UNIX 1
#endif
#ifndef MSG_OOB
#define MSG_OOB 0x0001
#endif
#ifndef POLLPRI
#define POLLPRI 0x0002
#endif
#endif
#ifndef SKIFF_WASI_SIGACTION
#define SKIFF_WASI_SIGACTION
#include <signal.h>
struct sigaction {
	void (*sa_handler)(int);
	sigset_t sa_mask;
	int sa_flags;
};
int sigaction(int sig, const struct sigaction *act, struct sigaction *old);
int sigemptyset(sigset_t *set);
int sigfillset(sigset_t *set);
int sigaddset(sigset_t *set, int sig);
int sigdelset(sigset_t *set, int sig);
int sigprocmask(int how, const sigset_t *set, sigset_t *old);
#ifndef SIG_BLOCK
#define SIG_BLOCK 0
#define SIG_UNBLOCK 1
#define SIG_SETMASK 2
#endif
#endif
#ifndef SKIFF_WASI_SOCKETS
#define SKIFF_WASI_SOCKETS
#include <sys/socket.h>
int socket(int domain, int type, int protocol);
int socketpair(int domain, int type, int protocol, int fds[2]);
int bind(int fd, const struct sockaddr *addr, socklen_t len);
int connect(int fd, const struct sockaddr *addr, socklen_t len);
int listen(int fd, int backlog);
int getsockname(int fd, struct sockaddr *addr, socklen_t *len);
int getpeername(int fd, struct sockaddr *addr, socklen_t *len);
ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *addr, socklen_t alen);
ssize_t recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *addr, socklen_t *alen);
int setsockopt(int fd, int level, int name, const void *value, socklen_t len);
#ifndef SO_ERROR
#define SO_ERROR 4
#endif
#ifndef SOL_IP
#define SOL_IP 0
#endif
#endif
#ifndef SKIFF_WASI_MKTEMP
#define SKIFF_WASI_MKTEMP
char *mktemp(char *tmpl);
#endif
