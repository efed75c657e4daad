# A tiny gem vendored into the app: Skiff puts vendor/NAME/lib on the load path.
module Greeting
  def self.hello(language)
    "Hello from #{language} on Skiff!"
  end
end
