// The suspend functions of the bindings under kotlinx.coroutines, against `xh serve`: many
// coroutines moving data at once (SHA-256 checked), cancellation mid-read and mid-write,
// withTimeout, a cancelled open, structured concurrency ending a client, and a client shut
// down under suspended calls. Called by BindingsTest.kt's main.
import kotlinx.coroutines.*
import uniffi.xhttp_mobile.*
import java.io.ByteArrayOutputStream
import java.net.DatagramSocket
import java.net.InetAddress

const val INF: UInt = UInt.MAX_VALUE

/// Elapsed milliseconds of `block`.
inline fun <R> timed(block: () -> R): Pair<R, Long> {
    val start = System.nanoTime()
    val r = block()
    return r to (System.nanoTime() - start) / 1_000_000
}

/// The server config pointed at a UDP socket that never answers (a dial waits for ever).
fun silentConfig(config: String, silent: DatagramSocket): String =
    config.replace(Regex("\"port\":\\d+"), "\"port\":${silent.localPort}")

suspend fun readAll(t: XhTunnel, size: Int): ByteArray {
    val got = ByteArrayOutputStream()
    while (got.size() < size) {
        val b = t.readAsync(65536u, T)
        if (b.isEmpty()) break
        got.write(b)
    }
    return got.toByteArray()
}

suspend fun writeAll(t: XhTunnel, data: ByteArray) {
    var off = 0
    while (off < data.size) {
        val end = minOf(off + 100_000, data.size)
        off += t.writeAsync(data.copyOfRange(off, end), T).toInt()
    }
}

suspend fun fiftyCoroutines(config: String) = coroutineScope {
    XhClient(withMode(config, "stream-up")).use { c ->
        val results = (0 until 50).map { i ->
            async(Dispatchers.Default) {
                c.openAsync(T).use { t ->
                    val data = ByteArray(100_000 + i * 3_001) { (it * 13 + i).toByte() }
                    val writer = launch {
                        writeAll(t, data)
                        t.shutdownWriteAsync(T)
                    }
                    val got = readAll(t, data.size)
                    writer.join()
                    val eof = t.readAsync(16u, T).isEmpty()
                    sha(got) == sha(data) && eof
                }
            }
        }.awaitAll()
        check(results.all { it }, "50 coroutines: every echo matches by SHA-256 and ends: $results")
        check(c.stats().openTunnels == 0uL, "50 coroutines: no tunnel left open")
        println("kotlin async: 50 concurrent coroutines ok")
    }
}

suspend fun cancellationKeepsTunnelsUsable(config: String) = coroutineScope {
    XhClient(withMode(config, "packet-up")).use { c ->
        val t = c.openAsync(T)
        // Cancelled mid-read (nothing to read): the coroutine ends at once, nothing is lost.
        val reader = launch(Dispatchers.Default) { t.readAsync(1024u, INF) }
        delay(200)
        val (_, ms) = timed { reader.cancelAndJoin() }
        check(reader.isCancelled && ms < 1000, "a read is cancelled with its coroutine (${ms} ms)")
        // withTimeout and withTimeoutOrNull around a read.
        check(withTimeoutOrNull(150) { t.readAsync(1024u, INF) } == null, "withTimeoutOrNull")
        try {
            withTimeout(150) { t.readAsync(1024u, INF) }
            check(false, "withTimeout must throw")
        } catch (e: TimeoutCancellationException) {
            check(true, "withTimeout")
        }
        // The library's own timeout is its exception.
        try {
            t.readAsync(1024u, 100u)
            check(false, "a read timeout must throw")
        } catch (e: XhException.Timeout) {
            check(true, "timeout")
        }
        check(!t.isClosed(), "the tunnel survives cancelled reads")
        val data = ByteArray(300_000) { (it * 5).toByte() }
        val w = launch { writeAll(t, data) }
        val got = readAll(t, data.size)
        w.join()
        check(sha(got) == sha(data), "after cancelled reads the echo is intact")
        t.shutdown()
        t.close()
        println("kotlin async: cancelled reads and timeouts ok")
    }
}

suspend fun cancelledWritesQueueNothing(config: String) = coroutineScope {
    // Small windows and queues; nothing is read back until the upload stalls. A write no
    // larger than the upload queue, cancelled, queued nothing: what comes back is exactly
    // the writes that returned.
    val limits = "{\"streamReceiveWindow\":16384,\"connectionReceiveWindow\":65536," +
        "\"downloadQueue\":65536,\"uploadQueue\":65536}"
    XhClient.withMemoryLimits(withMode(config, "stream-up"), limits).use { c ->
        val t = c.openAsync(T)
        val accepted = ByteArrayOutputStream()
        var stalled = 0
        var i = 0
        while (stalled < 2 && i < 2000) {
            val piece = ByteArray(60_000) { (it + i * 7).toByte() }
            i++
            val n = withTimeoutOrNull(300) { t.writeAsync(piece, INF) }
            if (n == null) { stalled++; continue }
            check(n == piece.size.toULong(), "a write is whole: $n")
            accepted.write(piece)
        }
        check(stalled == 2, "the upload stalled (after ${accepted.size()} bytes)")
        // And one cancelled by its job rather than a timeout.
        val w = launch(Dispatchers.Default) { t.writeAsync(ByteArray(60_000), INF) }
        delay(200)
        w.cancelAndJoin()
        check(w.isCancelled && !t.isClosed(), "a cancelled write leaves the tunnel usable")
        val tail = ByteArray(100_000) { (it * 3).toByte() }
        val writer = launch {
            writeAll(t, tail)
            t.shutdownWriteAsync(T)
        }
        accepted.write(tail)
        val want = accepted.toByteArray()
        val got = readAll(t, want.size)
        writer.join()
        check(got.size == want.size && sha(got) == sha(want), "the echo is exactly the writes that returned")
        check(t.readAsync(16u, T).isEmpty(), "EOF after the echo")
        t.close()
        println("kotlin async: cancelled writes queued nothing (${want.size} bytes echoed)")
    }
}

suspend fun cancelledOpenAndStructuredConcurrency(config: String) = coroutineScope {
    DatagramSocket(0, InetAddress.getLoopbackAddress()).use { silent ->
        XhClient(silentConfig(config, silent)).use { c ->
            val opening = launch(Dispatchers.Default) { c.openAsync(INF) }
            delay(300)
            val (_, ms) = timed { opening.cancelAndJoin() }
            check(opening.isCancelled && ms < 1000, "an open is cancelled with its coroutine (${ms} ms)")
            check(c.stats().openTunnels == 0uL, "a cancelled open leaves no tunnel")
        }
    }
    // A scope whose children wait in reads of a client's tunnels: cancelling the scope ends
    // them promptly, and `use` then frees the tunnels and the client.
    val scope = launch(Dispatchers.Default) {
        XhClient(config).use { c ->
            coroutineScope {
                repeat(5) {
                    launch { c.openAsync(T).use { t -> t.readAsync(1024u, INF) } }
                }
            }
        }
    }
    delay(1000)
    val (_, ms) = timed { scope.cancelAndJoin() }
    check(scope.isCancelled && ms < 2000, "cancelling the scope ends its client's calls (${ms} ms)")
    // The library carries on: a new client works.
    XhClient(config).use { c ->
        val p = c.probeAsync(T)
        check(p.roundTripUs > 0uL, "a probe after the scope ended: $p")
    }
    println("kotlin async: cancelled open and structured concurrency ok")
}

suspend fun shutdownWakesSuspendedCalls(config: String) = coroutineScope {
    DatagramSocket(0, InetAddress.getLoopbackAddress()).use { silent ->
        val nobody = XhClient(silentConfig(config, silent))
        val live = XhClient(config)
        val t = live.openAsync(T)
        val calls = listOf(
            async(Dispatchers.Default) { runCatching { nobody.openAsync(INF) } },
            async(Dispatchers.Default) { runCatching { nobody.probeAsync(INF) } },
            async(Dispatchers.Default) { runCatching { t.readAsync(1024u, INF) } },
        )
        delay(300)
        val (results, ms) = timed {
            nobody.shutdown()
            live.shutdown()
            calls.awaitAll()
        }
        for (r in results) {
            check(r.exceptionOrNull() is XhException.Closed, "a waiting call fails with Closed: $r")
        }
        check(ms < 2000, "shutdown wakes suspended calls promptly (${ms} ms)")
        t.close()
        nobody.close()
        live.close()
    }
    println("kotlin async: shutdown wakes suspended calls with Closed ok")
}

/// Runs `call` in a coroutine of its own and cancels it after a random instant (0-2 ms);
/// returns its result when it returned. Exact, unlike withTimeoutOrNull, whose timeout may
/// also discard a block that already returned (kotlinx documents that): here a call that
/// returned always stores its result, since nothing suspends between its return and the
/// store.
suspend fun <R : Any> cancelledAtRandom(rnd: java.util.Random, call: suspend () -> R): R? = coroutineScope {
    var result: R? = null
    val job = launch(Dispatchers.Default) { result = call() }
    when (val wait = rnd.nextInt(4)) {
        0 -> yield()
        else -> delay(wait.toLong() - 1)
    }
    job.cancelAndJoin()
    result
}

/// Reads and writes cancelled at random instants, hundreds of times, around an echo that
/// keeps moving: every byte of every write that returned comes back exactly once and in
/// order, and no byte of a cancelled write does (writes here fit the upload queue). A
/// cancel landing after the library finished a call but before its result was handed over
/// (uniffi's gap, see bindings/kotlin-ext) would lose or add bytes here.
suspend fun cancellationRacesLoseNothing(config: String) = coroutineScope {
    XhClient(withMode(config, "stream-up")).use { c ->
        val t = c.openAsync(T)
        val accepted = ByteArrayOutputStream()
        var cancelledWrites = 0
        var cancelledReads = 0
        val writer = launch(Dispatchers.Default) {
            val rnd = java.util.Random(7)
            var seq = 0
            while (accepted.size() < 3_000_000) {
                val piece = ByteArray(1 + rnd.nextInt(20_000)) { (seq * 31 + it).toByte() }
                seq++
                val n = cancelledAtRandom(rnd) { t.writeAsync(piece, INF) }
                if (n == null) { cancelledWrites++; continue }
                check(n == piece.size.toULong(), "a write is whole: $n of ${piece.size}")
                synchronized(accepted) { accepted.write(piece) }
            }
            t.shutdownWriteAsync(T)
        }
        val rnd = java.util.Random(11)
        val got = ByteArrayOutputStream()
        while (true) {
            val b = cancelledAtRandom(rnd) { t.readAsync((1 + rnd.nextInt(70_000)).toUInt(), INF) }
            if (b == null) { cancelledReads++; continue }
            if (b.isEmpty()) break
            got.write(b)
        }
        writer.join()
        val want = synchronized(accepted) { accepted.toByteArray() }
        val exact = got.size() == want.size && sha(got.toByteArray()) == sha(want)
        check(exact, "cancel races: ${got.size()} bytes back for ${want.size} accepted")
        check(cancelledReads > 50 && cancelledWrites > 50,
            "the races happened: $cancelledReads cancelled reads, $cancelledWrites cancelled writes")
        t.close()
        if (exact) println("kotlin async: $cancelledReads cancelled reads and $cancelledWrites cancelled writes lost and added nothing (${want.size} bytes)")
    }
}

fun asyncTests(config: String) = runBlocking {
    fiftyCoroutines(config)
    cancellationKeepsTunnelsUsable(config)
    cancelledWritesQueueNothing(config)
    cancellationRacesLoseNothing(config)
    cancelledOpenAndStructuredConcurrency(config)
    shutdownWakesSuspendedCalls(config)
}
