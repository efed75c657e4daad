/* WebAssembly has no way to switch stacks; Skiff's PHP build refuses to start fibers
 * (see zend_fibers.c), so these are never reached. They exist so Zend compiles. */
#ifndef SKIFF_WASI_UCONTEXT_H
#define SKIFF_WASI_UCONTEXT_H
#include <stddef.h>
typedef struct { void *ss_sp; int ss_flags; size_t ss_size; } stack_t;
typedef struct ucontext_t { struct ucontext_t *uc_link; stack_t uc_stack; } ucontext_t;
static inline int getcontext(ucontext_t *c) { (void)c; return -1; }
static inline void makecontext(ucontext_t *c, void (*f)(void), int argc, ...) { (void)c; (void)f; (void)argc; }
static inline int swapcontext(ucontext_t *from, const ucontext_t *to) { (void)from; (void)to; return -1; }
#endif
