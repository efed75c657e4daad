// A Scala web app for Skiff. Skiff compiles src/main/scala with Scala.js itself (sbt is not
// run on the server); locally, `sbt fastLinkJS` with the sbt-scalajs plugin builds the same code.
ThisBuild / scalaVersion := "2.13.18"

lazy val root = (project in file("."))
  .enablePlugins(ScalaJSPlugin)
  .settings(
    name := "scala-hello",
    scalaJSUseMainModuleInitializer := false
  )
