/* A CGI program: the request arrives in the environment and on stdin, the response goes to
 * stdout as headers, a blank line, then the body. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GREETING "Hello from C on Skiff!"

static const char *env_or(const char *name, const char *fallback) {
    const char *value = getenv(name);
    return value ? value : fallback;
}

static void text(const char *status, const char *body) {
    printf("Status: %s\r\n", status);
    printf("Content-Type: text/plain; charset=utf-8\r\n\r\n");
    fputs(body, stdout);
}

/* Writes s as a JSON string literal. */
static void json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            printf("\\%c", c);
        } else if (c < 0x20) {
            printf("\\u%04x", c);
        } else {
            putchar(c);
        }
    }
    putchar('"');
}

static void echo(void) {
    long length = atol(env_or("CONTENT_LENGTH", "0"));
    printf("Content-Type: %s\r\n\r\n", env_or("CONTENT_TYPE", "application/octet-stream"));
    char buf[8192];
    while (length > 0) {
        size_t want = length < (long)sizeof buf ? (size_t)length : sizeof buf;
        size_t got = fread(buf, 1, want, stdin);
        if (got == 0) {
            break;
        }
        fwrite(buf, 1, got, stdout);
        length -= (long)got;
    }
}

static void json(const char *method, const char *path) {
    printf("Content-Type: application/json\r\n\r\n");
    printf("{\"app\":");
    json_string(env_or("SKIFF_APP", ""));
    printf(",\"dyno\":");
    json_string(env_or("DYNO", ""));
    printf(",\"method\":");
    json_string(method);
    printf(",\"path\":");
    json_string(path);
    printf(",\"language\":\"c\"}\n");
}

int main(void) {
    const char *method = getenv("REQUEST_METHOD");
    if (method == NULL) {
        fprintf(stderr, "hello.wasm is a CGI program: run it behind a web server\n");
        return 1;
    }
    const char *path = env_or("PATH_INFO", "/");
    if (*path == '\0') {
        path = "/";
    }

    if (strcmp(method, "GET") == 0 && strcmp(path, "/") == 0) {
        text("200 OK", GREETING "\n");
    } else if (strcmp(method, "GET") == 0 && strncmp(path, "/env/", 5) == 0) {
        const char *value = getenv(path + 5);
        if (value) {
            text("200 OK", value);
        } else {
            text("404 Not Found", "not set\n");
        }
    } else if (strcmp(method, "POST") == 0 && strcmp(path, "/echo") == 0) {
        echo();
    } else if (strcmp(method, "GET") == 0 && strcmp(path, "/json") == 0) {
        json(method, path);
    } else {
        fprintf(stderr, "no route for %s %s\n", method, path);
        text("404 Not Found", "not found\n");
    }
    return 0;
}
