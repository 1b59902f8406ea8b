package org.edgederm.demo

import android.content.Context
import org.edgederm.core.Card
import org.edgederm.core.CardException
import org.edgederm.core.ModelInput
import org.edgederm.core.Preprocess
import org.edgederm.core.TfliteCard
import org.edgederm.core.dequantize
import org.tensorflow.lite.DataType
import org.tensorflow.lite.Interpreter
import java.io.Closeable
import java.io.FileInputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.MappedByteBuffer
import java.nio.channels.FileChannel

/**
 * The exported `.tflite` (assets/model.tflite) run with LiteRT, and its card, read from the
 * model's own metadata (falling back to an `assets/model.tflite.card.json` sidecar). Integer
 * input/output tensors are quantized/dequantized with the tensor's parameters, exactly like
 * `edgederm.runtime.tflite_backend`, so the card's float spec works for every precision.
 */
class LiteRtModel private constructor(private val buffer: MappedByteBuffer, val card: Card, threads: Int) : Closeable {
    private val interpreter = Interpreter(buffer, Interpreter.Options().setNumThreads(threads))
    private val input = interpreter.getInputTensor(0)
    private val output = interpreter.getOutputTensor(0)

    init {
        val want = card.spec.shape
        if (!input.shape().contentEquals(want)) {
            throw CardException("model input ${input.shape().toList()} does not match the card's spec ${want.toList()}")
        }
        if (output.shape().last() != card.classes.size) {
            throw CardException("model has ${output.shape().last()} outputs, the card lists ${card.classes.size} classes")
        }
    }

    val inputType: DataType get() = input.dataType()

    /** One preprocessed input → raw model outputs (logits or probabilities, per the card). */
    fun run(x: ModelInput): DoubleArray {
        val feed: ByteBuffer = when (input.dataType()) {
            DataType.INT8, DataType.UINT8 -> if (x.dtype == "float32") {
                val q = input.quantizationParams()
                val dtype = if (input.dataType() == DataType.INT8) "int8" else "uint8"
                ModelInput(x.shape, dtype, Preprocess.quantize(x.values, q.scale.toDouble(), q.zeroPoint, dtype)).toByteBuffer()
            } else x.toByteBuffer()
            else -> x.toByteBuffer()
        }
        val out = ByteBuffer.allocateDirect(output.numBytes()).order(ByteOrder.nativeOrder())
        interpreter.run(feed, out)
        out.rewind()
        val n = card.classes.size
        return when (output.dataType()) {
            DataType.FLOAT32 -> DoubleArray(n) { out.getFloat().toDouble() }
            DataType.INT8 -> output.quantizationParams().let { q -> dequantize(IntArray(n) { out.get().toInt() }, q.scale, q.zeroPoint) }
            DataType.UINT8 -> output.quantizationParams().let { q -> dequantize(IntArray(n) { out.get().toInt() and 0xFF }, q.scale, q.zeroPoint) }
            else -> throw CardException("unsupported output tensor type ${output.dataType()}")
        }
    }

    override fun close() = interpreter.close()

    companion object {
        const val ASSET = "model.tflite"

        fun open(context: Context, threads: Int = 4): LiteRtModel {
            val fd = context.assets.openFd(ASSET)
            val mapped = FileInputStream(fd.fileDescriptor).channel.use { ch ->
                ch.map(FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength)
            }
            val json = TfliteCard.read(mapped)
                ?: runCatching { context.assets.open("$ASSET.card.json").bufferedReader().use { it.readText() } }.getOrNull()
                ?: throw CardException("$ASSET has no embedded edgederm card and there is no $ASSET.card.json asset")
            return LiteRtModel(mapped, Card.parse(json), threads)
        }
    }
}
