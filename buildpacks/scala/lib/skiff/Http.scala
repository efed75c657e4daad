package skiff

import scala.concurrent.Future
import scala.scalajs.js
import scala.scalajs.js.JSConverters._
import scala.scalajs.js.|
import scala.util.control.NonFatal

/** An HTTP request. The body has been read whole, as UTF-8 text; header names are lower case. */
final class Request(
    val method: String,
    val path: String,
    val query: String,
    val headers: Map[String, String],
    val body: String
) {

  /** A header's value, whatever the case of `name`. */
  def header(name: String): Option[String] = headers.get(name.toLowerCase)

  /** The query string's parameters, decoded; the first value of each name. */
  lazy val params: Map[String, String] = {
    val parsed = js.Dynamic.newInstance(js.Dynamic.global.URLSearchParams)(query)
    var out = Map.empty[String, String]
    parsed.forEach { (value: String, key: String) =>
      if (!out.contains(key)) out += key -> value
    }
    out
  }

  def param(name: String): Option[String] = params.get(name)

  override def toString: String = s"Request($method $path${if (query.isEmpty) "" else "?" + query})"
}

/** An HTTP response: a status, headers in order, and a text body. */
final case class Response(status: Int, body: String = "", headers: Vector[(String, String)] = Vector.empty) {
  def withHeader(name: String, value: String): Response = copy(headers = headers :+ (name -> value))
  def withStatus(code: Int): Response = copy(status = code)
  def withContentType(value: String): Response =
    copy(headers = headers.filterNot(_._1.equalsIgnoreCase("content-type")) :+ ("Content-Type" -> value))
}

object Response {
  def text(body: String, status: Int = 200): Response =
    Response(status, body, Vector("Content-Type" -> "text/plain; charset=utf-8"))
  def ok(body: String): Response = text(body)
  def html(body: String, status: Int = 200): Response =
    Response(status, body, Vector("Content-Type" -> "text/html; charset=utf-8"))
  /** A JSON response; `body` is JSON text, such as what [[Json.obj]] returns. */
  def json(body: String, status: Int = 200): Response =
    Response(status, body, Vector("Content-Type" -> "application/json"))
  def notFound(body: String = "not found\n"): Response = text(body, 404)
  def redirect(location: String, status: Int = 302): Response =
    Response(status, "", Vector("Location" -> location))
}

/** What a handler may return: a Response, or a Future or JS Promise of one. */
trait Reply[-R] {
  def apply(result: R): js.Promise[Response]
}

object Reply {
  implicit val response: Reply[Response] = r => js.Promise.resolve[Response](r)
  implicit val future: Reply[Future[Response]] = f => f.toJSPromise(scala.scalajs.concurrent.JSExecutionContext.queue)
  implicit val promise: Reply[js.Promise[Response]] = p => p
}

/** An app's handler object may extend this; any object with a `handle` method will do. */
trait Handler {
  def handle(request: Request): Response
}

/** Config vars (and the dyno's environment), read when asked, so a changed config var is seen. */
object Env {
  def get(name: String): Option[String] = {
    val process = js.Dynamic.global.selectDynamic("process")
    if (js.isUndefined(process) || process == null) None
    else {
      val value = process.env.selectDynamic(name)
      if (js.isUndefined(value) || value == null) None else Some(value.toString)
    }
  }
  def apply(name: String): String =
    get(name).getOrElse(throw new NoSuchElementException(s"config var $name is not set"))
  def getOrElse(name: String, default: => String): String = get(name).getOrElse(default)
}

/** A small JSON writer: strings, numbers, booleans, Options, Maps, sequences and null. */
object Json {
  def obj(fields: (String, Any)*): String = js.JSON.stringify(dictionary(fields))
  def arr(items: Any*): String = js.JSON.stringify(items.map(toJs).toJSArray)
  def stringify(value: Any): String = js.JSON.stringify(toJs(value))

  private def dictionary(fields: Iterable[(Any, Any)]): js.Dictionary[js.Any] = {
    val d = js.Dictionary.empty[js.Any]
    fields.foreach { case (k, v) => d(k.toString) = toJs(v) }
    d
  }

  private def toJs(value: Any): js.Any = value match {
    case null | None          => null
    case Some(v)              => toJs(v)
    case s: String            => s
    case b: Boolean           => b
    case n: Int               => n
    case n: Long              => n.toDouble
    case n: Double            => n
    case n: Float             => n.toDouble
    case n: BigDecimal        => n.toDouble
    case m: collection.Map[_, _] => dictionary(m)
    case xs: Iterable[_]      => xs.map(toJs).toJSArray
    case xs: Array[_]         => xs.map(toJs).toJSArray
    case other                => other.toString
  }
}

/** Connects a handler to the component's fetch event. Used by the entry point Skiff generates. */
object Server {
  def serve[R](handler: Request => R)(implicit reply: Reply[R]): Unit = {
    val onError: js.Function1[Any, js.Any | js.Thenable[js.Any]] = err => failure(err)
    val listener: js.Function1[js.Dynamic, Unit] = event => {
      val request = event.request
      val answered = request
        .text()
        .asInstanceOf[js.Promise[String]]
        .`then`[Response]((body: String) => reply(handler(toRequest(request, body))))
        .`then`[js.Any]((response: Response) => toFetch(response))
        .`catch`[js.Any](onError)
      event.respondWith(answered)
    }
    js.Dynamic.global.addEventListener("fetch", listener)
  }

  private def toRequest(request: js.Dynamic, body: String): Request = {
    val url = js.Dynamic.newInstance(js.Dynamic.global.URL)(request.url)
    var headers = Map.empty[String, String]
    request.headers.forEach { (value: String, key: String) =>
      headers += key.toLowerCase -> value
    }
    val search = url.search.asInstanceOf[String]
    new Request(
      request.method.asInstanceOf[String],
      url.pathname.asInstanceOf[String],
      if (search.startsWith("?")) search.substring(1) else search,
      headers,
      body
    )
  }

  private def toFetch(response: Response): js.Any = {
    val headers = js.Dynamic.newInstance(js.Dynamic.global.Headers)()
    response.headers.foreach { case (k, v) => headers.append(k, v) }
    val init = js.Dynamic.literal(status = response.status, headers = headers)
    // A status that forbids a body (204, 304) gets none.
    val body: js.Any = if (response.status == 204 || response.status == 304) null else response.body
    js.Dynamic.newInstance(js.Dynamic.global.Response)(body, init)
  }

  private def failure(err: Any): js.Any = {
    val text = err match {
      case t: Throwable => t.toString + t.getStackTrace.take(20).map("\n  at " + _).mkString
      case other =>
        val stack = other.asInstanceOf[js.Dynamic].selectDynamic("stack")
        if (js.isUndefined(stack)) String.valueOf(other) else stack.toString
    }
    js.Dynamic.global.console.error(text)
    toFetch(Response.text("Internal Server Error\n", 500))
  }
}
