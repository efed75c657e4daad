addSbtPlugin("org.scala-js" % "sbt-scalajs" % "1.20.2")
