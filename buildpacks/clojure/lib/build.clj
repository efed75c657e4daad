;; Compiles a ClojureScript Ring app and Skiff's adapter into one JavaScript file.
;; Usage: java -cp COMPILER_CLASSPATH:ADAPTER_DIR clojure.main build.clj
;;          APP_DIR ADAPTER_DIR GEN_DIR OUT_FILE CACHE_DIR
;; The handler is the one named by the SKIFF_RING_HANDLER config var, project.clj's
;; `:ring {:handler ...}` (lein-ring's key), `:skiff/handler` in deps.edn or shadow-cljs.edn,
;; or else the one namespace in the source paths that defines `handler`.
(require '[cljs.build.api :as cljs]
         '[clojure.edn :as edn]
         '[clojure.java.io :as io]
         '[clojure.string :as str])

(defn fail [& parts]
  (binding [*out* *err*]
    (println (str " !     " (apply str parts))))
  (System/exit 1))

(defn read-edn [^java.io.File f]
  (try
    ;; Unknown tags (#shadow/env and the like) read as their value.
    (edn/read-string {:default (fn [_ v] v)} (slurp f))
    (catch Exception e
      (fail (.getName f) " cannot be read: " (.getMessage e)))))

(defn read-project [^java.io.File f]
  (try
    (let [form (binding [*read-eval* false] (read-string (slurp f)))]
      (when-not (and (seq? form) (= 'defproject (first form)))
        (fail "project.clj does not start with (defproject ...)"))
      (apply hash-map (drop 3 form)))
    (catch Exception e
      (fail "project.clj cannot be read: " (.getMessage e)))))

(defn app-config
  "Source paths and the configured handler (or nil) from the app's build files."
  [^java.io.File app]
  (let [file #(io/file app %)
        project (when (.isFile (file "project.clj")) (read-project (file "project.clj")))
        deps (when (.isFile (file "deps.edn")) (read-edn (file "deps.edn")))
        shadow (when (.isFile (file "shadow-cljs.edn")) (read-edn (file "shadow-cljs.edn")))
        strings (fn [xs] (when (and (sequential? xs) (every? string? xs)) (seq xs)))]
    {:libs (concat (keys (:deps deps))
                   (map first (filter sequential? (:dependencies project)))
                   (map first (filter sequential? (:dependencies shadow))))
     :paths (distinct (or (seq (concat (strings (:paths deps))
                                  (strings (:source-paths project))
                                  (strings (:source-paths shadow))))
                          ["src"]))
     :handler (or (not-empty (System/getenv "SKIFF_RING_HANDLER"))
                  (get-in project [:ring :handler])
                  (:skiff/handler deps)
                  (:skiff/handler shadow))}))

(defn cljs-files [dirs]
  (for [^java.io.File dir dirs
        ^java.io.File f (file-seq dir)
        :when (and (.isFile f) (re-find #"\.clj[sc]$" (.getName f)))]
    f))

(defn find-handler
  "The namespace-qualified `handler` of the one namespace that defines one."
  [files]
  (let [found (for [f files
                    :let [text (slurp f)
                          ns-name (second (re-find #"\(ns\s+([^\s\)]+)" text))]
                    :when (and ns-name (re-find #"\(defn?\s+handler[\s\)]" text))]
                (symbol ns-name "handler"))]
    (case (count found)
      1 (first found)
      0 (fail "no Ring handler found: define (defn handler [request] ...) in a .cljs or .cljc "
              "namespace, or name it with :skiff/handler in deps.edn (e.g. :skiff/handler "
              "my.app/handler) or :ring {:handler my.app/handler} in project.clj")
      (fail "several namespaces define handler (" (str/join ", " found) "); name the one to "
            "serve with :skiff/handler in deps.edn or :ring {:handler ...} in project.clj"))))

(let [[app-dir adapter-dir gen-dir out-file cache-dir] *command-line-args*
      app (io/file app-dir)
      ;; :simple by default; :advanced shrinks the bundle further but renames JS properties
      ;; the app reaches through interop unless it has externs. (:whitespace keeps
      ;; goog.provide's globals, which do not survive the bundler's module wrapper.)
      optimizations (keyword (or (not-empty (System/getenv "CLJS_OPTIMIZATIONS")) "simple"))
      _ (when-not (#{:simple :advanced} optimizations)
          (fail "CLJS_OPTIMIZATIONS must be simple or advanced, not " (name optimizations)))
      {:keys [libs paths handler]} (app-config app)
      ;; The compiler and its own dependencies are all the build has; other libraries are
      ;; named so a missing namespace later is not a mystery.
      extra (remove '#{org.clojure/clojurescript org.clojure/clojure thheller/shadow-cljs}
                    (distinct (filter symbol? libs)))
      _ (when (seq extra)
          (println (str "Not fetched (only ClojureScript and its own dependencies are "
                        "available to the build yet): " (str/join ", " extra))))
      sources (filter #(.isDirectory ^java.io.File %) (map #(io/file app %) paths))
      _ (when (empty? sources)
          (fail "no source folder: looked for " (str/join ", " paths)))
      files (cljs-files sources)
      _ (when (empty? files)
          (fail "no ClojureScript sources (.cljs or .cljc) in " (str/join ", " paths)
                "; Skiff builds Clojure apps with ClojureScript, not for the JVM"))
      handler (if handler (symbol (str handler)) (find-handler files))
      handler-ns (or (some-> (namespace handler) symbol)
                     (fail "the handler must be namespace-qualified (my.app/handler), got " handler))
      main (io/file gen-dir "skiff" "main.cljs")
      ;; The app's folders join the classpath, where the compiler looks for namespaces and
      ;; for the macros they use.
      loader (clojure.lang.DynamicClassLoader. (.getContextClassLoader (Thread/currentThread)))]
  (println (str "Serving " handler " from " (str/join ", " paths)))
  (io/make-parents main)
  (doseq [dir (conj (vec sources) (io/file gen-dir))]
    (.addURL loader (.toURL (.toURI (.getCanonicalFile ^java.io.File dir)))))
  (.setContextClassLoader (Thread/currentThread) loader)
  ;; The entry namespace requires the app's and hands the adapter the handler's var, so
  ;; the handler is looked up on each request.
  (spit main (str (pr-str (list 'ns 'skiff.main (list :require '[skiff.ring] [handler-ns])))
                  "\n"
                  (pr-str (list 'skiff.ring/serve! (list 'var handler)))
                  "\n"))
  (try
    (with-bindings {clojure.lang.Compiler/LOADER loader}
      (cljs/build (apply cljs/inputs (concat (map str sources) [adapter-dir gen-dir]))
                  {:main 'skiff.main
                   :output-to out-file
                   :output-dir (str (io/file cache-dir "out"))
                   :optimizations optimizations
                   :pretty-print false
                   :static-fns true}))
    (catch Throwable e
      (binding [*out* *err*]
        (loop [e e]
          (when e
            (println (str " !     " (.getMessage e)))
            (recur (.getCause e)))))
      (System/exit 1)))
  (shutdown-agents)
  (System/exit 0))
