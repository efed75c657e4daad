package dev.skiff.http;

import java.nio.charset.StandardCharsets;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;

/** An HTTP response: status, headers and body. */
public final class Response {
    private final int status;
    private final Map<String, String> headers = new LinkedHashMap<>();
    private byte[] body;

    private Response(int status, byte[] body) {
        this.status = status;
        this.body = body;
    }

    /** A response with {@code status} and a UTF-8 text body (text/plain unless a header says otherwise). */
    public static Response text(int status, String body) {
        return new Response(status, body.getBytes(StandardCharsets.UTF_8))
                .header("Content-Type", "text/plain; charset=utf-8");
    }

    /** A 200 response with a UTF-8 text body. */
    public static Response ok(String body) {
        return text(200, body);
    }

    /** A response with {@code status} and a JSON body the app has already serialised. */
    public static Response json(int status, String json) {
        return new Response(status, json.getBytes(StandardCharsets.UTF_8))
                .header("Content-Type", "application/json");
    }

    /** A response with {@code status} and raw bytes. */
    public static Response bytes(int status, byte[] body) {
        return new Response(status, body.clone());
    }

    /** Sets (or replaces) a header; returns this response. */
    public Response header(String name, String value) {
        headers.remove(name);
        headers.entrySet().removeIf(e -> e.getKey().equalsIgnoreCase(name));
        headers.put(name, value);
        return this;
    }

    public int status() {
        return status;
    }

    public Map<String, String> headers() {
        return Collections.unmodifiableMap(headers);
    }

    public byte[] body() {
        return body.clone();
    }
}
