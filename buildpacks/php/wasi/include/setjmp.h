/* wasi-libc has no setjmp/longjmp (WebAssembly cannot unwind the C stack). */
#ifndef SKIFF_WASI_SETJMP_H
#define SKIFF_WASI_SETJMP_H
typedef long jmp_buf[1];
typedef long sigjmp_buf[1];
_Noreturn void skiff_php_bailout(void);
#define setjmp(b) ((void)(b), 0)
#define sigsetjmp(b, m) ((void)(b), (void)(m), 0)
#define longjmp(b, v) ((void)(b), (void)(v), skiff_php_bailout())
#define siglongjmp(b, v) ((void)(b), (void)(v), skiff_php_bailout())
#endif
