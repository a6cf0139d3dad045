// The xhttp-mobile AAR: libxhttp_mobile.so for arm64-v8a, armeabi-v7a and x86_64 (built by
// cargo-ndk from the repository root), the uniffi-generated Kotlin (../bindings/kotlin) and
// JNA, which that Kotlin calls the library through.
//
// Needs: the Android SDK (ANDROID_HOME or local.properties `sdk.dir`) with the NDK below,
// Rust with the three Android targets (`rustup target add aarch64-linux-android
// armv7-linux-androideabi x86_64-linux-android`) and `cargo install cargo-ndk` (4.x).
// Output: build/outputs/aar/xhttp-mobile-release.aar (`gradle assembleRelease`).

plugins {
    id("com.android.library") version "8.7.3"
    id("org.jetbrains.kotlin.android") version "2.4.21"
    `maven-publish`
}

group = "dev.xhttpmobile"
version = "0.1.0"

/** The minimum Android API level: VpnService, protect(fd) and everything we use exist there. */
val minApi = 24

/** ABI (Android's name) of each library built. */
val abis = listOf("arm64-v8a", "armeabi-v7a", "x86_64")

val repoRoot: File = rootDir.parentFile
val rustJniLibs = layout.buildDirectory.dir("rustJniLibs")

android {
    namespace = "dev.xhttpmobile"
    compileSdk = 35
    // r27c: the LTS NDK. cargo-ndk adds 16 KB alignment for 64-bit ABIs on NDKs before r28;
    // the task below asks for it explicitly on every ABI anyway.
    ndkVersion = "27.2.12479018"

    defaultConfig {
        minSdk = minApi
        consumerProguardFiles("consumer-rules.pro")
        ndk { abiFilters += abis }
    }

    sourceSets["main"].apply {
        java.srcDir(repoRoot.resolve("bindings/kotlin"))
        // XhTunnel.readAsync/writeAsync, written by hand (see uniffi.toml).
        java.srcDir(repoRoot.resolve("bindings/kotlin-ext"))
        jniLibs.srcDir(rustJniLibs)
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    publishing {
        singleVariant("release") { withSourcesJar() }
    }
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    // The generated Kotlin's public API mentions JNA types (Pointer), hence `api`. The AAR
    // carries libjnidispatch.so for each ABI; 5.17.0 and later are 16 KB aligned.
    api("net.java.dev.jna:jna:5.19.1@aar")
    // The generated suspend functions (openAsync, readAsync, …) are built on it.
    api("org.jetbrains.kotlinx:kotlinx-coroutines-core:1.11.0")
}

// cargo-ndk: one release build per ABI, `.so` files laid out as jniLibs/<abi>/. The library
// is the root package without default features (no test server).
val cargoNdk = tasks.register<Exec>("cargoNdk") {
    description = "Builds libxhttp_mobile.so for ${abis.joinToString()} with cargo-ndk"
    workingDir = repoRoot
    val ndkDir = androidComponents.sdkComponents.ndkDirectory
    doFirst { environment("ANDROID_NDK_HOME", ndkDir.get().asFile.absolutePath) }
    // For the target only (cargo-ndk passes --target): 16 KB ELF alignment for Android 15+
    // devices with 16 KB pages (Google Play requires it for apps targeting Android 15).
    environment("RUSTFLAGS", "-C link-arg=-Wl,-z,max-page-size=16384")
    val args = mutableListOf("cargo", "ndk", "--platform", "$minApi")
    abis.forEach { args += listOf("-t", it) }
    args += listOf(
        "-o", rustJniLibs.get().asFile.absolutePath,
        "build", "--release", "-p", "xhttp-mobile", "--lib",
    )
    commandLine(args)
    inputs.files(fileTree(repoRoot.resolve("src")), repoRoot.resolve("Cargo.toml"),
        repoRoot.resolve("Cargo.lock"), repoRoot.resolve("build.rs"))
    outputs.dir(rustJniLibs)
}

if (providers.gradleProperty("xhttp.cargoBuild").getOrElse("true").toBoolean()) {
    tasks.named("preBuild") { dependsOn(cargoNdk) }
}

publishing {
    publications {
        register<MavenPublication>("release") {
            artifactId = "xhttp-mobile"
            afterEvaluate { from(components["release"]) }
        }
    }
}
