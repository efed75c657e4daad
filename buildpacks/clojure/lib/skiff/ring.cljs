(ns skiff.ring
  "Serves a Ring handler as a wasi:http component: each request that reaches the component's
  fetch event becomes a Ring request map, and the map the handler returns becomes the response.
  The request body is read whole before the handler is called, so :body is a string (or nil
  when the request has none) rather than an InputStream."
  (:require [clojure.string :as str]))

(defn- header-map [^js headers]
  ;; Ring names request headers in lower case; repeated headers arrive joined by the Fetch API.
  (let [m (volatile! {})]
    (.forEach headers (fn [v k] (vswap! m assoc (str/lower-case k) v)))
    @m))

(defn- default-port [scheme]
  (if (= scheme :https) 443 80))

(defn request->ring
  "The Ring request map for a Fetch API Request whose body has been read into `body`."
  [^js request body]
  (let [url (js/URL. (.-url request))
        scheme (keyword (str/replace (.-protocol url) ":" ""))
        search (.-search url)
        headers (header-map (.-headers request))
        port (.-port url)]
    {:server-port (if (str/blank? port) (default-port scheme) (js/parseInt port 10))
     :server-name (.-hostname url)
     :remote-addr (get headers "x-forwarded-for" "")
     :uri (.-pathname url)
     :query-string (when (> (count search) 1) (subs search 1))
     :scheme scheme
     :request-method (keyword (str/lower-case (.-method request)))
     :protocol "HTTP/1.1"
     :headers headers
     :body (when-not (str/blank? body) body)}))

(defn- body->js [body]
  (cond
    (nil? body) nil
    (string? body) body
    (instance? js/Uint8Array body) body
    (instance? js/ArrayBuffer body) body
    ;; Ring allows a seq of strings (ISeq bodies are written piece by piece).
    (seqable? body) (apply str body)
    :else (str body)))

(defn ring->response
  "The Fetch API Response for a Ring response map; nil (no route) is a 404."
  [response]
  (if (nil? response)
    (js/Response. "Not Found\n" #js {:status 404 :headers #js {"content-type" "text/plain; charset=utf-8"}})
    (let [{:keys [status headers body]} response
          h (js/Headers.)]
      (doseq [[k v] headers]
        (let [k (if (keyword? k) (name k) (str k))]
          (if (sequential? v)
            (doseq [x v] (.append h k (str x)))
            (.set h k (str v)))))
      (js/Response. (body->js body) #js {:status (or status 200) :headers h}))))

(defn- internal-error [err]
  (js/console.error (if (and err (.-stack err)) (.-stack err) (str err)))
  (js/Response. "Internal Server Error\n" #js {:status 500 :headers #js {"content-type" "text/plain; charset=utf-8"}}))

(defn serve!
  "Answers every request with `handler`, a Ring handler: a fn of one argument (the request map)
  returning a response map, or a JS promise of one."
  [handler]
  (js/addEventListener
   "fetch"
   (fn [^js event]
     (let [request (.-request event)]
       (.respondWith
        event
        (-> (.text request)
            (.then (fn [body] (handler (request->ring request body))))
            (.then ring->response)
            (.catch internal-error)))))))
