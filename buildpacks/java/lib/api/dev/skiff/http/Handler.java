package dev.skiff.http;

/**
 * A web app on Skiff: one request in, one response out. Skiff builds the class that implements
 * it into WebAssembly and calls {@link #handle} once per request.
 */
@FunctionalInterface
public interface Handler {
    Response handle(Request request) throws Exception;
}
