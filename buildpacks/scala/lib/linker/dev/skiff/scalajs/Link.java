package dev.skiff.scalajs;

import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;

import org.scalajs.linker.PathIRContainer;
import org.scalajs.linker.PathOutputDirectory;
import org.scalajs.linker.StandardImpl;
import org.scalajs.logging.Level;
import org.scalajs.logging.ScalaConsoleLogger;

import scala.collection.JavaConverters;
import scala.collection.Seq;
import scala.concurrent.Await;
import scala.concurrent.ExecutionContext;
import scala.concurrent.ExecutionContext$;
import scala.concurrent.Future;
import scala.concurrent.duration.Duration;

/**
 * Links Scala.js IR into one ES module, as sbt's fastLinkJS does, with the optimizer on.
 * Usage: Link OUT_DIR MAIN_OBJECT CLASSPATH_ENTRY...
 * The module calls MAIN_OBJECT.main when it is loaded.
 *
 * The linker's configuration types live in the package org.scalajs.linker.interface, a name
 * Java source cannot spell, so those are reached by reflection.
 */
public final class Link {
    private static final String API = "org.scalajs.linker.interface.";

    private Link() {}

    public static void main(String[] args) throws Exception {
        if (args.length < 3) {
            System.err.println("usage: Link OUT_DIR MAIN_OBJECT CLASSPATH_ENTRY...");
            System.exit(2);
        }
        Path out = Paths.get(args[0]);
        List<Path> classpath = new ArrayList<>();
        for (int i = 2; i < args.length; i++) {
            classpath.add(Paths.get(args[i]));
        }
        Files.createDirectories(out);

        ExecutionContext ec = ExecutionContext$.MODULE$.global();
        Object config = call(null, Class.forName(API + "StandardConfig"), "apply");
        config = call(config, "withModuleKind", module(API + "ModuleKind$ESModule$"));
        config = call(config, "withOptimizer", true);
        config = call(config, "withSourceMap", false);
        Object linker = StandardImpl.linker(cast(config));

        Future<scala.Tuple2<Seq<Object>, Seq<Path>>> found = cast(PathIRContainer.fromClasspath(seq(classpath), ec));
        Seq<Object> containers = Await.result(found, Duration.Inf())._1();
        Object cache = call(StandardImpl.irFileCache(), "newCache");
        Object irFiles = Await.result(cast(call(cache, "cached", containers, ec)), Duration.Inf());
        Object init = call(module(API + "ModuleInitializer$"), "mainMethodWithArgs", args[1], "main");
        List<Object> inits = new ArrayList<>();
        inits.add(init);
        Object logger = new ScalaConsoleLogger(Level.Warn$.MODULE$);
        try {
            Future<Object> linked = cast(call(linker, "link", irFiles, seq(inits),
                    PathOutputDirectory.apply(out), logger, ec));
            Await.result(linked, Duration.Inf());
        } catch (Exception e) {
            // The linker has logged what it could not link (a missing class or method).
            System.err.println("linking failed: " + e.getMessage());
            System.exit(1);
        }
    }

    private static <T> Seq<T> seq(List<T> list) {
        return JavaConverters.asScalaBufferConverter(list).asScala().toList();
    }

    @SuppressWarnings("unchecked")
    private static <T> T cast(Object o) {
        return (T) o;
    }

    private static Object module(String className) throws ReflectiveOperationException {
        return Class.forName(className).getField("MODULE$").get(null);
    }

    private static Object call(Object target, String name, Object... args) throws Exception {
        return call(target, target.getClass(), name, args);
    }

    /** Calls the public method `name` of `type` whose parameters accept `args`. */
    private static Object call(Object target, Class<?> type, String name, Object... args) throws Exception {
        for (Method m : type.getMethods()) {
            if (!m.getName().equals(name) || m.getParameterCount() != args.length
                    || Modifier.isStatic(m.getModifiers()) != (target == null)) {
                continue;
            }
            Class<?>[] params = m.getParameterTypes();
            boolean fits = true;
            for (int i = 0; i < params.length && fits; i++) {
                Class<?> p = params[i] == boolean.class ? Boolean.class : params[i];
                fits = p.isInstance(args[i]);
            }
            if (fits) {
                try {
                    return m.invoke(target, args);
                } catch (InvocationTargetException e) {
                    throw e.getCause() instanceof Exception ex ? ex : e;
                }
            }
        }
        throw new NoSuchMethodException(type.getName() + "." + name);
    }
}
