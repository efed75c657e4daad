# Skiff's Rack server side for ruby.wasm: the part of a Rack server an app does not write.
#
# SkiffRack.boot runs once, at build time, inside the snapshot: it puts vendored gems on the
# load path and evaluates config.ru (its `use`, `map`, `run` and `warmup`), so every require
# the app makes is already done when a request arrives. SkiffRack.serve runs per request, as
# a CGI program: the environment of that run (request variables and config vars) becomes
# ENV and the Rack env, the body comes from stdin, and the response goes to stdout.
module SkiffRack
  APP_ROOT = "/app"

  # The config.ru language: what Rack::Builder offers, without depending on the rack gem.
  class Builder
    def initialize(&block)
      @uses = []
      @maps = nil
      @run = nil
      @warmups = []
      instance_eval(&block) if block
    end

    def use(middleware, *args, &block)
      @uses << proc { |app| middleware.new(app, *args, &block) }
    end
    ruby2_keywords(:use)

    def run(app = nil, &block)
      raise ArgumentError, "run takes an app or a block, not both" if app && block

      @run = app || block
    end

    def map(path, &block)
      (@maps ||= {})[path] = block
    end

    def warmup(prc = nil, &block)
      @warmups << (prc || block)
    end

    def to_app
      app = @run
      if @maps
        mapped = @maps.to_h { |path, block| [path, Builder.new(&block).to_app] }
        mapped[""] = app if app
        app = URLMap.new(mapped)
      end
      raise "config.ru never calls `run`: end it with `run YourApp` (any object with #call(env))" unless app

      app = @uses.reverse.inject(app) { |inner, wrap| wrap.call(inner) }
      @warmups.each { |w| w.call(app) }
      app
    end
  end

  # `map "/path" do ... end`: the longest matching prefix wins, as in Rack::URLMap.
  class URLMap
    def initialize(mapping)
      @mapping = mapping.map { |path, app| [path.chomp("/"), app] }.sort_by { |path, _| -path.size }
    end

    def call(env)
      path = env["PATH_INFO"].to_s
      @mapping.each do |prefix, app|
        next unless path == prefix || path.start_with?("#{prefix}/") || prefix.empty?

        rest = path[prefix.size..]
        return app.call(env.merge("SCRIPT_NAME" => env["SCRIPT_NAME"].to_s + prefix,
                                  "PATH_INFO" => rest))
      end
      [404, { "content-type" => "text/plain" }, ["Not Found: #{path}\n"]]
    end
  end

  class << self
    # Build time: load the app. Anything that goes wrong fails the build with Ruby's message.
    def boot(config_ru)
      Dir.chdir(APP_ROOT)
      $LOAD_PATH.unshift(*vendored_lib_dirs, File.join(APP_ROOT, "lib"))
      source = File.read(config_ru)
      source = source.sub(/^__END__\n.*\z/m, "")
      @app = eval("SkiffRack::Builder.new {\n#{source}\n}.to_app", TOPLEVEL_BINDING, config_ru, 0)
      $stdout.flush
      $stderr.flush
    rescue Exception => e # rubocop:disable Lint/RescueException
      warn "#{config_ru}: #{e.class}: #{e.message}"
      app_frames(e).first(12).each { |line| warn "  #{line}" }
      if e.is_a?(LoadError)
        warn "Gems are not installed from a registry: vendor pure-Ruby gems under vendor/NAME/lib."
      end
      $stderr.flush
      exit!(1)
    end

    # The app's own lines of a backtrace: Skiff's boot code and RubyGems' require are noise.
    def app_frames(error)
      frames = error.backtrace || []
      own = frames.reject { |line| line.start_with?("eval:", "<internal:", "-e:") }
      own.empty? ? frames : own
    end

    # Each vendored gem's lib/: vendor/NAME/lib, vendor/gems/NAME/lib, and bundler's
    # `bundle install --path vendor/bundle` layout.
    def vendored_lib_dirs
      %w[vendor/*/lib vendor/gems/*/lib vendor/bundle/ruby/*/gems/*/lib]
        .flat_map { |pattern| Dir.glob(File.join(APP_ROOT, pattern)) }
        .select { |dir| File.directory?(dir) }
        .uniq
    end

    # Request time. `raw` is the program's environment as WASI gives it (NUL-separated).
    def serve(raw)
      vars = {}
      raw.split("\0").each do |pair|
        name, value = pair.split("=", 2)
        vars[name] = value.to_s unless name.nil? || name.empty?
      end
      # The snapshot's ENV is the build's (empty); this request's variables replace it.
      ENV.replace(vars)
      # Seeds from the snapshot would repeat in every request.
      srand
      $stdout.binmode
      status, headers, body = @app.call(rack_env)
      respond(status, headers, body)
    rescue Exception => e # rubocop:disable Lint/RescueException
      warn "#{e.class}: #{e.message}"
      app_frames(e).first(20).each { |line| warn "  #{line}" }
      unless @head_sent
        $stdout.write("Status: 500\r\nContent-Type: text/plain\r\n\r\nInternal Server Error\n")
      end
    ensure
      $stdout.flush
      $stderr.flush
    end

    private

    def rack_env
      env = ENV.to_h
      env.delete("HTTP_CONTENT_TYPE")
      env.delete("HTTP_CONTENT_LENGTH")
      env["SCRIPT_NAME"] ||= ""
      env["PATH_INFO"] = "/" if env["PATH_INFO"].to_s.empty? && env["SCRIPT_NAME"].empty?
      env["QUERY_STRING"] ||= ""
      length = env["CONTENT_LENGTH"].to_i
      body = length.positive? ? $stdin.binmode.read(length).to_s : +""
      env["rack.input"] = StringIO.new(body.force_encoding(Encoding::BINARY))
      env["rack.errors"] = $stderr
      env["rack.version"] = [1, 6]
      env["rack.url_scheme"] = env["HTTPS"] == "on" ? "https" : "http"
      env["rack.multithread"] = false
      env["rack.multiprocess"] = true
      env["rack.run_once"] = true
      env["rack.hijack?"] = false
      env["SERVER_PROTOCOL"] ||= "HTTP/1.1"
      env
    end

    def respond(status, headers, body)
      head = +"Status: #{status.to_i}\r\n"
      headers.each do |name, value|
        next if name.to_s.casecmp?("status")

        Array(value).each do |v|
          v.to_s.split("\n").each { |line| head << "#{name}: #{line}\r\n" }
        end
      end
      head << "\r\n"
      $stdout.write(head)
      @head_sent = true
      return if ENV["REQUEST_METHOD"] == "HEAD"

      if body.respond_to?(:each)
        body.each { |chunk| $stdout.write(chunk) }
      elsif body.respond_to?(:call)
        body.call($stdout)
      end
    ensure
      body.close if body.respond_to?(:close)
    end
  end
end

require "stringio"
