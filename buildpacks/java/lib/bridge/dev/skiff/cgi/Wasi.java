package dev.skiff.cgi;

import org.teavm.interop.Address;
import org.teavm.interop.Import;

/**
 * The WASI preview 1 calls the bridge makes itself: TeaVM's class library answers
 * {@code System.getenv} with null and has no standard input, so the CGI environment and the
 * request body are read here.
 */
final class Wasi {
    private static final String MODULE = "wasi_snapshot_preview1";

    private Wasi() {}

    @Import(module = MODULE, name = "environ_sizes_get")
    static native short environSizesGet(Address count, Address size);

    @Import(module = MODULE, name = "environ_get")
    static native short environGet(Address environ, Address buffer);

    @Import(module = MODULE, name = "fd_read")
    static native short fdRead(int fd, Address iovecs, int iovecCount, Address read);

    @Import(module = MODULE, name = "fd_write")
    static native short fdWrite(int fd, Address iovecs, int iovecCount, Address written);
}
