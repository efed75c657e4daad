#!/usr/bin/env bash
# Builds php-cgi for wasm32-wasi from PHP's source tarball with clang and wasi-libc.
# Usage: build-php.sh PHP_SOURCE_TARBALL OUTPUT.wasm
#
# WASI (preview 1) has no setjmp/longjmp, processes, users or sockets. Instead of porting
# those, the build adds:
#   include/setjmp.h          zend_try runs its block once; a bailout (fatal error) ends
#                             the request through skiff_php_bailout() in skiff_wasi.c
#   include/ucontext.h        lets Zend compile; fibers refuse to start (patches/)
#   include/netdb.h, sys/un.h the declarations PHP's network code needs; lookups fail
#   include/skiff_wasi_compat.h  declarations of the POSIX calls stubbed in skiff_wasi.c
#   skiff_wasi.c              routing (front controller, static files), the bailout, stubs
#   patches/*.patch           small changes to PHP's sources, each guarded by __wasi__
# Needs: clang (16+) with the wasm32 compiler runtime, wasm-ld, wasi-libc.
set -euo pipefail
tarball=$(realpath "$1")
out=$2
here=$(cd "$(dirname "$0")" && pwd)
jobs=${PHP_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}

clang= ; version=
for v in 19 18 17 16; do
  if command -v "clang-$v" >/dev/null 2>&1 \
      && compgen -G "/usr/lib/llvm-$v/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a" >/dev/null; then
    clang=clang-$v; version=$v; break
  fi
done
[ -n "$clang" ] || { echo "no clang with the wasm32 compiler runtime (Debian: clang-16 lld-16 libclang-rt-16-dev-wasm32)" >&2; exit 1; }
[ -f /usr/include/wasm32-wasi/stdio.h ] || { echo "wasi-libc is not installed (Debian: wasi-libc)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/skiff-php-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
# A sysroot holding only wasi-libc: with --sysroot=/usr, clang would fall back to the host's
# glibc headers for anything wasi-libc lacks, and configure would believe in them.
mkdir -p "$work/sysroot/include" "$work/sysroot/lib"
ln -s /usr/include/wasm32-wasi "$work/sysroot/include/wasm32-wasi"
ln -s /usr/lib/wasm32-wasi "$work/sysroot/lib/wasm32-wasi"

tar -xf "$tarball" -C "$work"
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'php-*' | head -1)
[ -n "$src" ] && [ -f "$src/configure" ] || { echo "$tarball holds no PHP source tree with a configure script" >&2; exit 1; }
cd "$src"
for p in "$here"/patches/*.patch; do
  patch -p1 --quiet < "$p"
done
cp "$here/skiff_wasi.c" sapi/cgi/skiff_wasi.c

emulated="-D_WASI_EMULATED_GETPID -D_WASI_EMULATED_SIGNAL -D_WASI_EMULATED_PROCESS_CLOCKS -D_WASI_EMULATED_MMAN"
export CC="$clang --target=wasm32-wasi --sysroot=$work/sysroot"
export AR=llvm-ar-$version RANLIB=llvm-ranlib-$version
command -v "$AR" >/dev/null 2>&1 || export AR=ar RANLIB=ranlib
export CFLAGS="-O2 -I$here/include $emulated"
export LDFLAGS="-fuse-ld=lld -lwasi-emulated-getpid -lwasi-emulated-signal -lwasi-emulated-process-clocks -lwasi-emulated-mman"
# getrusage exists in wasi-libc with none of the fields PHP reads; file mappings through the
# emulated mmap are copies PHP would unmap in part, which corrupts the C heap.
./configure --host=wasm32-unknown-wasi --build="$(uname -m)-pc-linux-gnu" \
  ac_cv_func_getrusage=no ac_cv_func_mmap=no \
  --disable-all --enable-cgi --disable-cli --disable-phpdbg \
  --enable-ctype --enable-filter --enable-tokenizer \
  --without-pcre-jit --disable-fiber-asm --disable-zend-signals --without-valgrind \
  --without-pear --disable-opcache --without-iconv --without-libxml --without-sqlite3 \
  --disable-dom --disable-xml --disable-simplexml --disable-xmlreader --disable-xmlwriter \
  --disable-phar --disable-session --disable-posix --without-openssl --without-zlib \
  --disable-rpath > "$work/configure.log" 2>&1 \
  || { tail -40 "$work/configure.log" >&2; echo "configure failed" >&2; exit 1; }
# The compat declarations go into every file PHP compiles, but not into configure's checks:
# those must keep finding fork() and friends missing.
sed -i "s|^CFLAGS_CLEAN = \(.*\)\$|CFLAGS_CLEAN = \1 -include $here/include/skiff_wasi_compat.h|" Makefile
# wasi-libc's emulations go after PHP's objects (static libraries only resolve what came
# before them). The stack WebAssembly gives C is 64 KiB by default; PHP's compiler recurses
# deeper.
sed -i "s|^EXTRA_LIBS = \(.*\)\$|EXTRA_LIBS = \1 -lwasi-emulated-getpid -lwasi-emulated-signal -lwasi-emulated-process-clocks -lwasi-emulated-mman|" Makefile
sed -i "s|^EXTRA_LDFLAGS_PROGRAM = \(.*\)\$|EXTRA_LDFLAGS_PROGRAM = \1 -Wl,-z,stack-size=1048576|" Makefile
# php-cgi loads no extensions at run time: exporting every symbol (2000+) only confuses the
# component adapter, which then finds its state overwritten.
sed -i "s|^\(BUILD_CGI = .*\) -export-dynamic |\1 |" Makefile
make -j"$jobs" sapi/cgi/php-cgi > "$work/make.log" 2>&1 \
  || { grep -E 'error|Error' "$work/make.log" | tail -40 >&2; echo "make failed" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
cp sapi/cgi/php-cgi "$out"
