package dev.skiff.cgi;

import dev.skiff.http.Env;
import dev.skiff.http.Handler;
import dev.skiff.http.Request;
import dev.skiff.http.Response;
import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Locale;
import java.util.Map;
import org.teavm.backend.wasm.wasi.Wasi;
import org.teavm.interop.Address;

/**
 * Runs one request through a {@link Handler} the CGI way: the request comes in as environment
 * variables and standard input, the response goes out on standard output as a {@code Status:}
 * line, headers, a blank line and the body.
 */
public final class Cgi {
    private static final int STDIN = 0;
    private static final int STDOUT = 1;
    private static final int STDERR = 2;

    private Cgi() {}

    public static void serve(Handler handler) {
        Map<String, String> env = environment();
        Env.install(env);
        Response response;
        try {
            response = handler.handle(request(env));
            if (response == null) {
                response = Response.text(500, "the handler returned no response\n");
                log("handler returned null");
            }
        } catch (Throwable e) {
            log("handler threw " + e);
            response = Response.text(500, "Internal Server Error\n");
        }
        write(STDOUT, render(response));
    }

    private static Request request(Map<String, String> env) {
        Map<String, String> headers = new HashMap<>();
        for (Map.Entry<String, String> e : env.entrySet()) {
            String key = e.getKey();
            if (key.startsWith("HTTP_")) {
                headers.put(key.substring(5).replace('_', '-').toLowerCase(Locale.ROOT), e.getValue());
            }
        }
        // CGI passes these two outside the HTTP_ variables.
        if (env.containsKey("CONTENT_TYPE")) {
            headers.put("content-type", env.get("CONTENT_TYPE"));
        }
        if (env.containsKey("CONTENT_LENGTH")) {
            headers.put("content-length", env.get("CONTENT_LENGTH"));
        }
        String path = env.getOrDefault("PATH_INFO", "");
        if (path.isEmpty()) {
            path = "/";
        }
        return new Request(
                env.getOrDefault("REQUEST_METHOD", "GET"),
                path,
                env.getOrDefault("QUERY_STRING", ""),
                headers,
                readAll(STDIN));
    }

    private static byte[] render(Response response) {
        StringBuilder head = new StringBuilder();
        head.append("Status: ").append(response.status()).append("\r\n");
        for (Map.Entry<String, String> h : response.headers().entrySet()) {
            String value = h.getValue();
            // A header value cannot carry a line break into the response head.
            if (value.indexOf('\r') >= 0 || value.indexOf('\n') >= 0) {
                log("dropped header " + h.getKey() + ": its value has a line break");
                continue;
            }
            head.append(h.getKey()).append(": ").append(value).append("\r\n");
        }
        head.append("\r\n");
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        byte[] headBytes = head.toString().getBytes(StandardCharsets.UTF_8);
        out.write(headBytes, 0, headBytes.length);
        byte[] body = response.body();
        out.write(body, 0, body.length);
        return out.toByteArray();
    }

    private static Map<String, String> environment() {
        int[] count = new int[1];
        int[] size = new int[1];
        Map<String, String> env = new HashMap<>();
        if (Environ.sizesGet(Address.ofData(count), Address.ofData(size)) != 0 || size[0] == 0) {
            return env;
        }
        int[] pointers = new int[count[0] + 1];
        byte[] buffer = new byte[size[0]];
        if (Environ.get(Address.ofData(pointers), Address.ofData(buffer)) != 0) {
            return env;
        }
        // The buffer holds NAME=value entries, each ended by a NUL byte.
        int start = 0;
        for (int i = 0; i < buffer.length; i++) {
            if (buffer[i] == 0) {
                String entry = new String(buffer, start, i - start, StandardCharsets.UTF_8);
                int eq = entry.indexOf('=');
                if (eq > 0) {
                    env.put(entry.substring(0, eq), entry.substring(eq + 1));
                }
                start = i + 1;
            }
        }
        return env;
    }

    private static byte[] readAll(int fd) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        byte[] chunk = new byte[16384];
        int[] iovec = new int[2];
        long[] read = new long[1];
        while (true) {
            iovec[0] = Address.ofData(chunk).toInt();
            iovec[1] = chunk.length;
            read[0] = 0;
            if (Wasi.fdRead(fd, Address.ofData(iovec).toStructure(), 1,
                    Address.ofData(read).toStructure()) != 0 || read[0] <= 0) {
                break;
            }
            out.write(chunk, 0, (int) read[0]);
        }
        return out.toByteArray();
    }

    private static void write(int fd, byte[] bytes) {
        int[] iovec = new int[2];
        long[] written = new long[1];
        int offset = 0;
        while (offset < bytes.length) {
            iovec[0] = Address.ofData(bytes).toInt() + offset;
            iovec[1] = bytes.length - offset;
            written[0] = 0;
            if (Wasi.fdWrite(fd, Address.ofData(iovec).toStructure(), 1,
                    Address.ofData(written).toStructure()) != 0 || written[0] <= 0) {
                return;
            }
            offset += (int) written[0];
        }
    }

    private static void log(String message) {
        write(STDERR, ("skiff: " + message + "\n").getBytes(StandardCharsets.UTF_8));
    }
}
