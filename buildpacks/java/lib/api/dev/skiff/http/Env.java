package dev.skiff.http;

import java.util.Collections;
import java.util.Map;

/**
 * The app's config vars. On Skiff they come from the request's environment (compiled to
 * WebAssembly, {@code System.getenv} always answers null); on a JVM, from the process's.
 */
public final class Env {
    private static Map<String, String> vars;

    private Env() {}

    /** A config var's value, or null when it is not set. */
    public static String get(String name) {
        Map<String, String> current = vars;
        return current != null ? current.get(name) : System.getenv(name);
    }

    /** A config var's value, or {@code fallback}. */
    public static String get(String name, String fallback) {
        String value = get(name);
        return value != null ? value : fallback;
    }

    /** Installs the environment Skiff's CGI bridge read; not for apps. */
    public static void install(Map<String, String> environment) {
        vars = Collections.unmodifiableMap(environment);
    }
}
