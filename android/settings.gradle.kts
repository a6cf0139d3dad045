// The xhttp-mobile Android library as a Gradle build of its own: build the AAR here
// (`gradle assembleRelease`), publish it (`gradle publishToMavenLocal`), or include it in an
// app's build with `includeBuild("path/to/xhttp-mobile/android")`.
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

rootProject.name = "xhttp-mobile"
