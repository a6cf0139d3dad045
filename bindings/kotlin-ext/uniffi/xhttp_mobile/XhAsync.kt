// Written by hand, not generated: XhTunnel's `readAsync` and `writeAsync` for Kotlin.
//
// uniffi 0.32's generated suspend functions drop a finished result when the coroutine is
// cancelled between the call's end and the hand-over of its result (kotlinx's prompt
// cancellation), and nothing tells the library: a read's bytes would be lost, a write
// queued while the caller sees a cancellation. So uniffi.toml leaves the generated ones out
// of the Kotlin bindings, and these are built from calls a cancellation cannot split: a
// suspend call that only waits and takes nothing (`readable`, `writable`), then a call that
// never waits and so cannot be cancelled half-way (`tryRead`, `tryWrite`).
package uniffi.xhttp_mobile

import kotlin.coroutines.cancellation.CancellationException

/** A timeout in ms (`UInt.MAX_VALUE`: none) spread over several calls. */
private class Remaining(timeoutMs: UInt) {
    private val end: Long? =
        if (timeoutMs == UInt.MAX_VALUE) null else System.nanoTime() + timeoutMs.toLong() * 1_000_000

    /** What is left, rounded up; 0 once it ran out (a call then takes only what is there). */
    fun ms(): UInt {
        val end = end ?: return UInt.MAX_VALUE
        val left = (end - System.nanoTime() + 999_999) / 1_000_000
        return left.coerceIn(0L, UInt.MAX_VALUE.toLong() - 1).toUInt()
    }
}

/**
 * `read` without blocking a thread: up to [max] bytes, empty at the end of the download.
 * Cancelled or timed out, it took nothing: the bytes stay for the next read.
 */
suspend fun XhTunnel.readAsync(max: UInt, timeoutMs: UInt): ByteArray {
    val left = Remaining(timeoutMs)
    while (true) {
        tryRead(max)?.let { return it }
        readable(left.ms())
    }
}

/**
 * `write` without blocking a thread: queues all of [data] and returns its size; stopped
 * part-way by its timeout or the tunnel's end, it returns what was queued (as `write`).
 * Cancelled, a write no larger than the upload queue queued nothing and the tunnel stays
 * usable; a larger one (queued in parts) cancelled after its first part ends the tunnel, so
 * the server never takes the part for the whole.
 */
suspend fun XhTunnel.writeAsync(data: ByteArray, timeoutMs: UInt): ULong {
    val left = Remaining(timeoutMs)
    var queued = 0
    try {
        while (queued < data.size) {
            val part = writable((data.size - queued).toULong(), left.ms()).toInt()
            val piece = if (part == data.size) data else data.copyOfRange(queued, queued + part)
            if (tryWrite(piece)) queued += part
        }
    } catch (e: XhException) {
        if (queued > 0) return queued.toULong()
        throw e
    } catch (e: CancellationException) {
        if (queued > 0) abortWrite(queued.toULong(), data.size.toULong())
        throw e
    }
    return queued.toULong()
}
