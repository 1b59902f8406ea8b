package org.edgederm.core

import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * Reads the card a `.tflite` file carries: the `edgederm.card` entry of the model's `metadata`
 * table, whose buffer holds the card JSON (written by `edgederm.runtime.tflite_backend`).
 *
 * A minimal FlatBuffers walk over the TFLite schema (`Model.buffers` = field 4, `Model.metadata` =
 * field 6; `Metadata.name` = 0, `Metadata.buffer` = 1; `Buffer.data` = 0, `Buffer.offset` = 1,
 * `Buffer.size` = 2), so the app reads the card of the very model it runs without another library.
 */
object TfliteCard {
    const val EMBED_KEY = "edgederm.card"

    /** The embedded card JSON, or null when the model has none. */
    fun read(model: ByteBuffer): String? {
        val b = model.duplicate().order(ByteOrder.LITTLE_ENDIAN)
        if (b.limit() < 8 || ident(b) != "TFL3") throw CardException("not a TFLite flatbuffer (no 'TFL3' identifier)")
        val root = u32(b, 0)
        val buffers = vector(b, field(b, root, 4))
        val metadata = vector(b, field(b, root, 6)) ?: return null
        for (i in 0 until metadata.second) {
            val meta = table(b, metadata.first + 4 * i)
            val name = string(b, field(b, meta, 0)) ?: continue
            if (name != EMBED_KEY) continue
            val index = field(b, meta, 1).let { if (it == 0) 0 else u32(b, it) }
            if (buffers == null || index >= buffers.second) throw CardException("card metadata points at a missing buffer")
            val buf = table(b, buffers.first + 4 * index)
            val offsetField = field(b, buf, 1)
            val bytes: ByteArray = if (offsetField != 0 && b.getLong(offsetField) > 1) {
                // Models over 2 GB keep buffers after the flatbuffer: (offset, size) into the file.
                val off = b.getLong(offsetField).toInt()
                val size = b.getLong(field(b, buf, 2)).toInt()
                ByteArray(size).also { for (k in 0 until size) it[k] = b.get(off + k) }
            } else {
                val data = vector(b, field(b, buf, 0)) ?: throw CardException("card metadata buffer is empty")
                ByteArray(data.second).also { for (k in 0 until data.second) it[k] = b.get(data.first + k) }
            }
            return String(bytes, Charsets.UTF_8)
        }
        return null
    }

    private fun ident(b: ByteBuffer): String = String(ByteArray(4) { b.get(4 + it) }, Charsets.US_ASCII)

    private fun u32(b: ByteBuffer, pos: Int): Int = b.getInt(pos)

    /** Position of the table an offset at [pos] points to. */
    private fun table(b: ByteBuffer, pos: Int): Int = pos + u32(b, pos)

    /** Absolute position of field [id] of the table at [tablePos], or 0 when absent. */
    private fun field(b: ByteBuffer, tablePos: Int, id: Int): Int {
        val vtable = tablePos - b.getInt(tablePos)
        val vsize = b.getShort(vtable).toInt() and 0xFFFF
        val slot = 4 + 2 * id
        if (slot >= vsize) return 0
        val off = b.getShort(vtable + slot).toInt() and 0xFFFF
        return if (off == 0) 0 else tablePos + off
    }

    /** (first element position, length) of the vector referenced at [fieldPos], or null. */
    private fun vector(b: ByteBuffer, fieldPos: Int): Pair<Int, Int>? {
        if (fieldPos == 0) return null
        val v = fieldPos + u32(b, fieldPos)
        return Pair(v + 4, u32(b, v))
    }

    private fun string(b: ByteBuffer, fieldPos: Int): String? {
        val (start, n) = vector(b, fieldPos) ?: return null
        return String(ByteArray(n) { b.get(start + it) }, Charsets.UTF_8)
    }
}
