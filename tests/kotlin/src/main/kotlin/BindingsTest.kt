// Drives the uniffi-generated Kotlin bindings against `xh serve` (config JSON in args[0]):
// a transfer in every mode checked by SHA-256, the socket protector, a network change, a
// probe, errors as exceptions, and shutdown/close in every order and repetition; then the
// suspend functions (AsyncTest.kt).
import uniffi.xhttp_mobile.*
import java.security.MessageDigest
import java.util.concurrent.atomic.AtomicInteger
import kotlin.system.exitProcess

const val T: UInt = 30_000u
var passed = 0
var failed = 0

fun check(ok: Boolean, what: String) {
    if (ok) passed++ else { failed++; println("FAIL: $what") }
}

fun sha(b: ByteArray): String =
    MessageDigest.getInstance("SHA-256").digest(b).joinToString("") { "%02x".format(it) }

fun withMode(config: String, mode: String): String {
    val key = "\"mode\":\"auto\""
    require(config.contains(key)) { "server config has no $key" }
    return config.replace(key, "\"mode\":\"$mode\"")
}

class CountingProtector : SocketProtector {
    val calls = AtomicInteger()
    override fun protect(fd: Int): Boolean {
        if (fd >= 0) calls.incrementAndGet()
        return true
    }
}

fun transfer(config: String, mode: String) {
    XhClient(withMode(config, mode)).use { client ->
        val protector = CountingProtector()
        client.setProtect(protector)
        val tunnel = client.open(T)
        check(protector.calls.get() == 1, "$mode: the dial's socket went through the protector")
        check(client.networkChanged() == 1u, "$mode: one connection moved")
        check(protector.calls.get() == 2, "$mode: the new socket went through the protector")
        val data = ByteArray(1 shl 20) { (it * 31 + mode.length).toByte() }
        val writer = Thread {
            var off = 0
            while (off < data.size) {
                val end = minOf(off + 70_000, data.size)
                off += tunnel.write(data.copyOfRange(off, end), T).toInt()
            }
            if (mode != "packet-up") tunnel.shutdownWrite(T)
        }
        writer.start()
        val got = java.io.ByteArrayOutputStream()
        while (got.size() < data.size) {
            val b = tunnel.read(65536u, T)
            if (b.isEmpty()) break
            got.write(b)
        }
        writer.join()
        check(sha(got.toByteArray()) == sha(data), "$mode: SHA-256 of the echo")
        if (mode != "packet-up") check(tunnel.read(1024u, T).isEmpty(), "$mode: end of stream")
        check(tunnel.peerAddr().startsWith("127.0.0.1:"), "$mode: peer address")
        val s = client.stats()
        check(s.bytesUp == data.size.toULong() && s.bytesDown == data.size.toULong(), "$mode: stats $s")
        val p = client.probe(T)
        check(p.connectUs > 0uL && p.roundTripUs > 0uL, "$mode: probe $p")
        // Shutdown twice, then use after shutdown: an exception, never a crash.
        tunnel.shutdown()
        tunnel.shutdown()
        check(tunnel.isClosed(), "$mode: closed")
        try {
            tunnel.read(16u, T)
            check(false, "$mode: read after shutdown must throw")
        } catch (e: XhException.Closed) {
            check(true, "closed")
        }
        tunnel.close()
        tunnel.close() // the binding's free, twice: idempotent
        client.shutdown()
        try {
            client.open(T)
            check(false, "$mode: open after client shutdown must throw")
        } catch (e: XhException.Closed) {
            check(true, "closed")
        }
        println("kotlin $mode ok ${data.size} bytes each way, sha256 ${sha(data).take(16)}...")
    }
}

fun main(args: Array<String>) {
    val config = args.getOrNull(0) ?: error("usage: BindingsTest <xh serve config JSON>")
    for (mode in listOf("packet-up", "stream-up", "stream-one")) transfer(config, mode)
    // Bad input: an exception naming the field.
    try {
        XhClient("{\"address\":\"x\",\"port\":70000}")
        check(false, "a bad port must throw")
    } catch (e: XhException.Config) {
        check(e.detail.contains("port"), "the error names the field: ${e.detail}")
    }
    // A wrong path: the server's 404 names the status.
    XhClient(config.replace("\"path\":\"/xh\"", "\"path\":\"/nowhere\"")).use { c ->
        try {
            c.probe(T)
            check(false, "a wrong path must throw")
        } catch (e: XhException.ServerStatus) {
            check(e.status == 404.toUShort(), "status 404: ${e.detail}")
        }
    }
    // A protector that throws refuses its socket: the open fails with the library's
    // exception, and the same client works once the protector behaves.
    XhClient(config).use { c ->
        c.setProtect(object : SocketProtector {
            override fun protect(fd: Int): Boolean = throw IllegalStateException("app bug")
        })
        try {
            c.open(T)
            check(false, "an open whose protector throws must fail")
        } catch (e: XhException.Connect) {
            check(true, "a throwing protector is a refused socket: ${e.detail}")
        }
        c.setProtect(CountingProtector())
        val t = c.open(T)
        t.write("after".toByteArray(), T)
        val back = java.io.ByteArrayOutputStream()
        while (back.size() < 5) {
            val b = t.read(16u, T)
            if (b.isEmpty()) break
            back.write(b)
        }
        check(back.toString() == "after", "the client works after a throwing protector")
        t.shutdown()
    }
    // Memory limits given apart: bounded windows still move data; a bad one names its field.
    XhClient.withMemoryLimits(config, "{\"streamReceiveWindow\":65536,\"downloadQueue\":65536}").use { c ->
        val t = c.open(T)
        val data = ByteArray(300_000) { (it * 7).toByte() }
        val writer = Thread { var off = 0; while (off < data.size) off += t.write(data.copyOfRange(off, data.size), T).toInt() }
        writer.start()
        val got = java.io.ByteArrayOutputStream()
        while (got.size() < data.size) {
            val b = t.read(65536u, T)
            if (b.isEmpty()) break
            got.write(b)
        }
        writer.join()
        check(sha(got.toByteArray()) == sha(data), "echo through small windows")
        t.shutdown()
    }
    try {
        XhClient.withMemoryLimits(config, "{\"uploadQueue\":10}")
        check(false, "a too small uploadQueue must throw")
    } catch (e: XhException.Config) {
        check(e.detail.contains("memoryLimits.uploadQueue"), "names the field: ${e.detail}")
    }
    // No platform log on a desktop JVM: nothing is installed, nothing fails.
    check(!enablePlatformLog(XhLogLevel.DEBUG), "no platform log on the JVM")
    // The suspend functions under kotlinx.coroutines (AsyncTest.kt).
    asyncTests(config)
    println("$passed passed, $failed failed")
    exitProcess(if (failed == 0) 0 else 1)
}
