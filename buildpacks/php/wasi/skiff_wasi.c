/* Skiff's part of php-cgi for WASI, included at the end of cgi_main.c's includes.
 *
 * 1. Routing: Skiff's CGI executor runs the app as one program mounted at the root, with the
 *    request path in PATH_INFO. Before PHP starts, this picks what to run the way `php -S`
 *    with a router does: an existing .php file under /app runs itself, an existing static
 *    file is sent as it is, anything else goes to /app/index.php (the front controller).
 * 2. Fatal errors: WebAssembly cannot longjmp, so Zend's bailout ends the request here
 *    instead: what the script printed so far and its headers are flushed, then the program
 *    exits. One process serves one request, so nothing is left to unwind.
 * 3. Stubs for the POSIX calls WASI lacks (processes, users, sockets, DNS): each fails
 *    the way a locked-down host would, and PHP reports it through its usual warnings.
 */
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#define SKIFF_APP_ROOT "/app"

/* ---- routing -------------------------------------------------------------------------- */

static const char *skiff_mime_type(const char *path)
{
	static const char *const types[][2] = {
		{".html", "text/html; charset=utf-8"}, {".htm", "text/html; charset=utf-8"},
		{".css", "text/css; charset=utf-8"}, {".js", "text/javascript; charset=utf-8"},
		{".mjs", "text/javascript; charset=utf-8"}, {".json", "application/json"},
		{".txt", "text/plain; charset=utf-8"}, {".xml", "application/xml"},
		{".svg", "image/svg+xml"}, {".png", "image/png"}, {".jpg", "image/jpeg"},
		{".jpeg", "image/jpeg"}, {".gif", "image/gif"}, {".webp", "image/webp"},
		{".ico", "image/x-icon"}, {".woff", "font/woff"}, {".woff2", "font/woff2"},
		{".pdf", "application/pdf"}, {".wasm", "application/wasm"}, {".map", "application/json"},
	};
	const char *dot = strrchr(path, '.');
	if (dot && !strchr(dot, '/')) {
		for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
			if (strcasecmp(dot, types[i][0]) == 0) {
				return types[i][1];
			}
		}
	}
	return "application/octet-stream";
}

/* Paths with a segment starting with '.' (.., .env, .git) never name a file to serve. */
static int skiff_path_is_plain(const char *path)
{
	for (const char *p = path; (p = strchr(p, '/')) != NULL; p++) {
		if (p[1] == '.') {
			return 0;
		}
	}
	return 1;
}

static int skiff_is_file(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int skiff_ends_with_php(const char *path, size_t len)
{
	return len >= 4 && strcasecmp(path + len - 4, ".php") == 0;
}

/* Sends a static file as the whole response. */
static void skiff_send_file(const char *file)
{
	FILE *in = fopen(file, "rb");
	struct stat st;
	if (!in || fstat(fileno(in), &st) != 0) {
		fputs("Status: 403 Forbidden\r\nContent-Type: text/plain\r\n\r\nForbidden\n", stdout);
		exit(0);
	}
	const char *method = getenv("REQUEST_METHOD");
	printf("Content-Type: %s\r\nContent-Length: %lld\r\n\r\n", skiff_mime_type(file),
		(long long) st.st_size);
	if (!method || strcmp(method, "HEAD") != 0) {
		char buf[16384];
		size_t n;
		while ((n = fread(buf, 1, sizeof(buf), in)) > 0) {
			if (fwrite(buf, 1, n, stdout) != n) {
				break;
			}
		}
	}
	fclose(in);
	fflush(stdout);
	exit(0);
}

static void skiff_run_script(const char *file, const char *script_name, const char *path_info)
{
	setenv("SCRIPT_FILENAME", file, 1);
	setenv("SCRIPT_NAME", script_name, 1);
	if (path_info && *path_info) {
		setenv("PATH_INFO", path_info, 1);
	} else {
		unsetenv("PATH_INFO");
	}
}

static void skiff_route_request(void)
{
	/* Zend's allocator carves 2 MiB-aligned chunks out of mmap() and unmaps the parts it
	 * does not need; wasi-libc's emulated mmap is malloc underneath and cannot unmap part
	 * of a mapping, so the C allocator serves PHP's memory instead. */
	setenv("USE_ZEND_ALLOC", "0", 1);
	if (!getenv("REQUEST_METHOD") || getenv("SCRIPT_FILENAME")) {
		return;
	}
	/* php-cgi refuses to run without this unless cgi.force_redirect is off; the executor is
	 * the only way in. */
	if (!getenv("REDIRECT_STATUS")) {
		setenv("REDIRECT_STATUS", "200", 1);
	}
	const char *path = getenv("PATH_INFO");
	if (!path || *path != '/') {
		path = "/";
	}
	size_t root_len = strlen(SKIFF_APP_ROOT);
	size_t path_len = strlen(path);
	char *file = malloc(root_len + path_len + sizeof("/index.php"));
	if (!file) {
		return;
	}
	memcpy(file, SKIFF_APP_ROOT, root_len);
	memcpy(file + root_len, path, path_len + 1);

	if (skiff_path_is_plain(path)) {
		/* /script.php and /script.php/more/path run script.php. */
		for (size_t i = 4; i <= path_len; i++) {
			if ((i == path_len || path[i] == '/') && skiff_ends_with_php(path, i)) {
				file[root_len + i] = '\0';
				if (skiff_is_file(file)) {
					char *script_name = strndup(path, i);
					skiff_run_script(file, script_name ? script_name : path, path + i);
					return;
				}
				file[root_len + i] = path[i];
			}
		}
		struct stat st;
		if (stat(file, &st) == 0) {
			if (S_ISREG(st.st_mode)) {
				skiff_send_file(file);
			}
			if (S_ISDIR(st.st_mode)) {
				/* A folder with its own index.php runs it. */
				size_t len = root_len + path_len;
				const char *sep = path[path_len - 1] == '/' ? "" : "/";
				snprintf(file + len, sizeof("/index.php"), "%sindex.php", sep);
				if (skiff_is_file(file)) {
					char *script_name = strdup(file + root_len);
					skiff_run_script(file, script_name ? script_name : "/index.php", NULL);
					return;
				}
			}
		}
	}
	/* Everything else is the front controller's. */
	strcpy(file, SKIFF_APP_ROOT "/index.php");
	if (!skiff_is_file(file)) {
		fputs("Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\n"
			"Not found (this app has no index.php)\n", stdout);
		fflush(stdout);
		exit(0);
	}
	skiff_run_script(file, "/index.php", path);
}

/* A php.ini in the app's root is read like any php.ini; without one, errors go to the logs
 * rather than into pages. */
static void skiff_ini_defaults(struct php_ini_builder *ini)
{
	if (!getenv("PHPRC") && skiff_is_file(SKIFF_APP_ROOT "/php.ini")) {
		setenv("PHPRC", SKIFF_APP_ROOT, 1);
		return;
	}
	php_ini_builder_define(ini, "display_errors=0");
	php_ini_builder_define(ini, "log_errors=1");
}

/* ---- fatal errors ----------------------------------------------------------------------- */

_Noreturn void skiff_php_bailout(void)
{
	static int bailing_out = 0;
	if (bailing_out++) {
		_Exit(255);
	}
	php_output_end_all();
	if (!SG(headers_sent)) {
		sapi_send_headers();
	}
	sapi_flush();
	fflush(stdout);
	_Exit(255);
}

/* ---- what WASI does not have ------------------------------------------------------------ */

#define SKIFF_ENOSYS(ret) do { errno = ENOSYS; return ret; } while (0)

FILE *popen(const char *command, const char *mode) { SKIFF_ENOSYS(NULL); }
int pclose(FILE *stream) { SKIFF_ENOSYS(-1); }
pid_t fork(void) { SKIFF_ENOSYS(-1); }
pid_t wait(int *status) { errno = ECHILD; return -1; }
pid_t waitpid(pid_t pid, int *status, int options) { errno = ECHILD; return -1; }
pid_t setsid(void) { SKIFF_ENOSYS(-1); }
pid_t getpgrp(void) { return 1; }
pid_t getppid(void) { return 1; }
int kill(pid_t pid, int sig) { errno = EPERM; return -1; }
int dup(int fd) { SKIFF_ENOSYS(-1); }
int dup2(int fd, int fd2) { SKIFF_ENOSYS(-1); }
int getdtablesize(void) { return 1024; }
int sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
	if (old) {
		memset(old, 0, sizeof(*old));
	}
	return 0;
}

/* One unprivileged user, like a dyno's. */
uid_t getuid(void) { return 1000; }
uid_t geteuid(void) { return 1000; }
gid_t getgid(void) { return 1000; }
gid_t getegid(void) { return 1000; }
int getgroups(int size, gid_t list[]) { return 0; }
int chmod(const char *path, mode_t mode) { SKIFF_ENOSYS(-1); }
int fchmod(int fd, mode_t mode) { SKIFF_ENOSYS(-1); }
int chown(const char *path, uid_t owner, gid_t group) { SKIFF_ENOSYS(-1); }
int lchown(const char *path, uid_t owner, gid_t group) { SKIFF_ENOSYS(-1); }
mode_t umask(mode_t mask) { return 022; }
struct passwd *getpwuid(uid_t uid) { return NULL; }
struct passwd *getpwnam(const char *name) { return NULL; }
struct group *getgrnam(const char *name) { return NULL; }
struct group *getgrgid(gid_t gid) { return NULL; }

/* syslog() has nowhere to go but stderr, which is the app's log. */
void openlog(const char *ident, int option, int facility) {}
void closelog(void) {}
void syslog(int priority, const char *format, ...)
{
	va_list args;
	va_start(args, format);
	vfprintf(stderr, format, args);
	va_end(args);
	fputc('\n', stderr);
}

int socket(int domain, int type, int protocol) { SKIFF_ENOSYS(-1); }
int socketpair(int domain, int type, int protocol, int fds[2]) { SKIFF_ENOSYS(-1); }
int bind(int fd, const struct sockaddr *addr, socklen_t len) { SKIFF_ENOSYS(-1); }
int connect(int fd, const struct sockaddr *addr, socklen_t len) { SKIFF_ENOSYS(-1); }
int listen(int fd, int backlog) { SKIFF_ENOSYS(-1); }
int getsockname(int fd, struct sockaddr *addr, socklen_t *len) { SKIFF_ENOSYS(-1); }
int getpeername(int fd, struct sockaddr *addr, socklen_t *len) { SKIFF_ENOSYS(-1); }
ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *addr,
	socklen_t alen) { SKIFF_ENOSYS(-1); }
ssize_t recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *addr,
	socklen_t *alen) { SKIFF_ENOSYS(-1); }
int setsockopt(int fd, int level, int name, const void *value, socklen_t len) { SKIFF_ENOSYS(-1); }

int h_errno;
struct hostent *gethostbyname(const char *name) { h_errno = HOST_NOT_FOUND; return NULL; }
struct hostent *gethostbyaddr(const void *addr, socklen_t len, int type)
{
	h_errno = HOST_NOT_FOUND;
	return NULL;
}
int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
	struct addrinfo **res) { return EAI_FAIL; }
void freeaddrinfo(struct addrinfo *res) {}
const char *gai_strerror(int code) { return "name resolution is not available in this sandbox"; }
int getnameinfo(const struct sockaddr *sa, socklen_t salen, char *host, socklen_t hostlen,
	char *serv, socklen_t servlen, int flags) { return EAI_FAIL; }
struct servent *getservbyname(const char *name, const char *proto) { return NULL; }
struct servent *getservbyport(int port, const char *proto) { return NULL; }
struct protoent *getprotobyname(const char *name) { return NULL; }
struct protoent *getprotobynumber(int proto) { return NULL; }

/* Temporary files (uploads, tempnam()) live in the dyno's private /tmp. */
char *mktemp(char *tmpl)
{
	static const char chars[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
	size_t len = strlen(tmpl);
	if (len < 6 || strcmp(tmpl + len - 6, "XXXXXX") != 0) {
		errno = EINVAL;
		tmpl[0] = '\0';
		return tmpl;
	}
	for (int attempt = 0; attempt < 100; attempt++) {
		unsigned char random[6];
		arc4random_buf(random, sizeof(random));
		for (int i = 0; i < 6; i++) {
			tmpl[len - 6 + i] = chars[random[i] % (sizeof(chars) - 1)];
		}
		struct stat st;
		if (stat(tmpl, &st) != 0 && errno == ENOENT) {
			return tmpl;
		}
	}
	errno = EEXIST;
	tmpl[0] = '\0';
	return tmpl;
}

/* Signals are never delivered to a WASI program; the masks only need to be well formed. */
int sigemptyset(sigset_t *set) { memset(set, 0, sizeof(*set)); return 0; }
int sigfillset(sigset_t *set) { memset(set, 0xff, sizeof(*set)); return 0; }
int sigaddset(sigset_t *set, int sig) { return 0; }
int sigdelset(sigset_t *set, int sig) { return 0; }
int sigprocmask(int how, const sigset_t *set, sigset_t *old)
{
	if (old) {
		memset(old, 0, sizeof(*old));
	}
	return 0;
}

/* Memory hints: WebAssembly memory has no pages to advise about. */
int madvise(void *addr, size_t len, int advice) { return 0; }

/* The component adapter keeps its state in memory it asks the program for. This wasi-libc
 * exports no allocator, so the adapter would grow memory behind malloc's back, and malloc
 * (which takes all memory up to memory.size as its own on first use) hands the same bytes out
 * again. Giving the adapter malloc's memory keeps the two apart. */
__attribute__((export_name("cabi_realloc")))
void *cabi_realloc(void *ptr, size_t old_size, size_t align, size_t new_size)
{
	if (new_size == 0) {
		return (void *) align;
	}
	void *ret = realloc(ptr, new_size);
	if (!ret) {
		abort();
	}
	return ret;
}
