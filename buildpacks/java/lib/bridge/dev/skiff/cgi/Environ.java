package dev.skiff.cgi;

import org.teavm.interop.Address;
import org.teavm.interop.Import;

/**
 * The WASI preview 1 calls TeaVM's runtime does not declare: its class library answers
 * {@code System.getenv} with null, so the CGI environment is read here. (fd_read and fd_write
 * are TeaVM's own declarations; a module may import each only once.)
 */
final class Environ {
    private static final String MODULE = "wasi_snapshot_preview1";

    private Environ() {}

    @Import(module = MODULE, name = "environ_sizes_get")
    static native short sizesGet(Address count, Address size);

    @Import(module = MODULE, name = "environ_get")
    static native short get(Address environ, Address buffer);
}
