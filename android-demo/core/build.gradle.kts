// Pure Kotlin, no Android dependency: the same sources run-tests.sh compiles with kotlinc.
plugins {
    id("org.jetbrains.kotlin.jvm")
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    // Android's own org.json (the platform provides it on the phone). Its JSONObject keeps key
    // order, which the decision rule relies on when a card has thresholds but no "priority".
    compileOnly("com.vaadin.external.google:android-json:0.0.20131108.vaadin1")
    testImplementation("com.vaadin.external.google:android-json:0.0.20131108.vaadin1")
}

// ./gradlew :core:goldenTest -Pgolden=/path/to/golden  (written by edgederm.demo.golden.write_golden)
tasks.register<JavaExec>("goldenTest") {
    group = "verification"
    description = "Check the core against golden vectors from the Python runtime"
    classpath = sourceSets["test"].runtimeClasspath
    mainClass.set("org.edgederm.core.GoldenTestKt")
    args(providers.gradleProperty("golden").orNull ?: "golden")
}
