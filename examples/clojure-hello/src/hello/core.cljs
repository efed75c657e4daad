(ns hello.core
  "A Ring app for Skiff: a plain handler fn from request map to response map."
  (:require [clojure.string :as str]
            [goog.object :as gobj]))

(def greeting "Hello from Clojure on Skiff!")

(defn- env
  "A config var, read when the request comes in."
  [name]
  (gobj/get (.-env js/process) name))

(defn- text [status body]
  {:status status
   :headers {"Content-Type" "text/plain; charset=utf-8"}
   :body body})

(defn- json [data]
  {:status 200
   :headers {"Content-Type" "application/json"}
   :body (js/JSON.stringify (clj->js data))})

(defn handler [{:keys [request-method uri query-string headers body]}]
  (cond
    (and (= request-method :get) (= uri "/"))
    (text 200 (str greeting "\n"))

    (and (= request-method :get) (str/starts-with? uri "/env/"))
    (if-some [value (env (subs uri (count "/env/")))]
      (text 200 value)
      (text 404 "not set\n"))

    (and (= request-method :post) (= uri "/echo"))
    {:status 200
     :headers {"Content-Type" (get headers "content-type" "application/octet-stream")}
     :body body}

    (and (= request-method :get) (= uri "/json"))
    (json {:app (env "SKIFF_APP")
           :dyno (env "DYNO")
           :release (env "SKIFF_RELEASE_VERSION")
           :clojurescript *clojurescript-version*
           :method (str/upper-case (name request-method))
           :path uri
           :query query-string
           :agent (get headers "user-agent")})

    :else
    (text 404 "not found\n")))
