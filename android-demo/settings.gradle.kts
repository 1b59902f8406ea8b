// The edgederm Android demo: a pure-Kotlin core (JVM library, golden-tested against Python)
// and the app that runs the exported .tflite with LiteRT. Needs internet (Google Maven, Maven Central).
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "edgederm-android-demo"
include(":core", ":app")
