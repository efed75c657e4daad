# A Rack app for Skiff: no gems to install, no server to start. Skiff's Ruby buildpack
# supplies the Rack server side; this file only says which app to run.
require "json"
require "greeting"

class HelloApp
  def call(env)
    request_method = env["REQUEST_METHOD"]
    path = env["PATH_INFO"]

    case [request_method, path]
    in ["GET", "/"]
      text(200, "#{Greeting.hello("Ruby")}\n")
    in ["GET", %r{\A/env/([^/]+)\z}]
      value = ENV[Regexp.last_match(1)]
      value ? text(200, value) : text(404, "not set\n")
    in ["POST", "/echo"]
      body = env["rack.input"].read
      type = env["CONTENT_TYPE"] || "application/octet-stream"
      [200, { "content-type" => type }, [body]]
    in ["GET", "/json"]
      payload = {
        app: ENV["SKIFF_APP"],
        dyno: ENV["DYNO"],
        ruby: RUBY_VERSION,
        method: request_method,
        path: path,
        query: env["QUERY_STRING"],
        agent: env["HTTP_USER_AGENT"],
        release: ENV["SKIFF_RELEASE_VERSION"]
      }
      [200, { "content-type" => "application/json" }, [JSON.generate(payload)]]
    else
      text(404, "no route for #{request_method} #{path}\n")
    end
  end

  private

  def text(status, body)
    [status, { "content-type" => "text/plain; charset=utf-8" }, [body]]
  end
end

run HelloApp.new
