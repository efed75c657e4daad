package hello;

import dev.skiff.http.Env;
import dev.skiff.http.Handler;
import dev.skiff.http.Request;
import dev.skiff.http.Response;

/** A Java web app for Skiff: one handler, routing on method and path. */
public class App implements Handler {
    static final String GREETING = "Hello from Java on Skiff!";

    @Override
    public Response handle(Request request) {
        String method = request.method();
        String path = request.path();

        if (method.equals("GET") && path.equals("/")) {
            return Response.ok(GREETING + "\n");
        }
        if (method.equals("GET") && path.startsWith("/env/")) {
            String value = Env.get(path.substring("/env/".length()));
            return value == null ? Response.text(404, "not set\n") : Response.ok(value);
        }
        if (method.equals("POST") && path.equals("/echo")) {
            String type = request.header("Content-Type");
            return Response.bytes(200, request.body())
                    .header("Content-Type", type == null ? "application/octet-stream" : type);
        }
        if (method.equals("GET") && path.equals("/json")) {
            return Response.json(200, "{"
                    + field("app", Env.get("SKIFF_APP")) + ","
                    + field("dyno", Env.get("DYNO")) + ","
                    + field("release", Env.get("SKIFF_RELEASE_VERSION")) + ","
                    + field("method", method) + ","
                    + field("path", path) + ","
                    + field("query", request.query()) + ","
                    + field("agent", request.header("User-Agent"))
                    + "}");
        }
        return Response.text(404, "not found\n");
    }

    private static String field(String name, String value) {
        return quote(name) + ":" + (value == null ? "null" : quote(value));
    }

    private static String quote(String s) {
        StringBuilder out = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                case '\n' -> out.append("\\n");
                case '\r' -> out.append("\\r");
                case '\t' -> out.append("\\t");
                default -> {
                    if (c < 0x20) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
                }
            }
        }
        return out.append('"').toString();
    }
}
