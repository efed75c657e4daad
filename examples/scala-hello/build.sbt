// A Scala web app for Skiff. On a push, Skiff compiles src/main/scala with Scala.js itself
// (sbt does not run on the server) and reads only scalaVersion from this file.
ThisBuild / scalaVersion := "2.13.18"

lazy val root = (project in file("."))
  .enablePlugins(ScalaJSPlugin)
  .settings(
    name := "scala-hello",
    scalaJSLinkerConfig ~= (_.withModuleKind(ModuleKind.ESModule))
  )
