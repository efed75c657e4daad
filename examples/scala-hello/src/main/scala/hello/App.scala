package hello

import skiff.{Env, Json, Request, Response}

/** A Scala web app for Skiff: one handler object, routing on method and path. */
object App extends skiff.Handler {
  val Greeting = "Hello from Scala on Skiff!"

  def handle(request: Request): Response = (request.method, request.path) match {
    case ("GET", "/") =>
      Response.ok(s"$Greeting\n")

    case ("GET", path) if path.startsWith("/env/") =>
      Env.get(path.stripPrefix("/env/")) match {
        case Some(value) => Response.ok(value)
        case None        => Response.notFound("not set\n")
      }

    case ("POST", "/echo") =>
      Response(200, request.body)
        .withContentType(request.header("Content-Type").getOrElse("application/octet-stream"))

    case ("GET", "/json") =>
      Response.json(
        Json.obj(
          "app"     -> Env.get("SKIFF_APP"),
          "dyno"    -> Env.get("DYNO"),
          "release" -> Env.get("SKIFF_RELEASE_VERSION"),
          "method"  -> request.method,
          "path"    -> request.path,
          "query"   -> request.query,
          "agent"   -> request.header("User-Agent")
        )
      )

    case _ =>
      Response.notFound()
  }
}
