package dev.skiff.http;

import java.nio.charset.StandardCharsets;
import java.util.Collections;
import java.util.Locale;
import java.util.Map;
import java.util.TreeMap;

/** An HTTP request: method, path, query string, headers and the whole body. */
public final class Request {
    private final String method;
    private final String path;
    private final String query;
    private final Map<String, String> headers;
    private final byte[] body;

    public Request(String method, String path, String query, Map<String, String> headers, byte[] body) {
        this.method = method;
        this.path = path;
        this.query = query == null ? "" : query;
        // Header names are case-insensitive; they are kept in lower case.
        Map<String, String> lower = new TreeMap<>();
        for (Map.Entry<String, String> e : headers.entrySet()) {
            lower.put(e.getKey().toLowerCase(Locale.ROOT), e.getValue());
        }
        this.headers = Collections.unmodifiableMap(lower);
        this.body = body == null ? new byte[0] : body;
    }

    /** GET, POST, ... */
    public String method() {
        return method;
    }

    /** The path, without the query string: {@code /users/7}. */
    public String path() {
        return path;
    }

    /** The query string without its {@code ?}, or an empty string. */
    public String query() {
        return query;
    }

    /** A header's value (any case of the name), or null. */
    public String header(String name) {
        return headers.get(name.toLowerCase(Locale.ROOT));
    }

    /** All headers, names in lower case. */
    public Map<String, String> headers() {
        return headers;
    }

    /** The body's bytes (empty when there is none). */
    public byte[] body() {
        return body.clone();
    }

    /** The body decoded as UTF-8. */
    public String bodyText() {
        return new String(body, StandardCharsets.UTF_8);
    }
}
