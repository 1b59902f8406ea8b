package org.edgederm.demo

import android.os.Bundle
import android.os.SystemClock
import android.widget.Button
import android.widget.EditText
import android.widget.TextView
import androidx.appcompat.app.AppCompatActivity
import org.edgederm.core.LatencyStats
import org.edgederm.core.Preprocess
import org.edgederm.core.RgbImage
import java.util.Random
import java.util.concurrent.Executors

/**
 * Latency of N runs on this phone: inference alone (LiteRT `run` on one preprocessed input) and
 * preprocessing alone (a 1024×768 image through the card's spec), as mean / p50 / p90 — the
 * percentiles `edgederm bench` reports. A few warm-up runs are not counted.
 */
class BenchmarkActivity : AppCompatActivity() {
    private val worker = Executors.newSingleThreadExecutor()

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_benchmark)
        val runs = findViewById<EditText>(R.id.runs)
        val threads = findViewById<EditText>(R.id.threads)
        val report = findViewById<TextView>(R.id.report)
        val button = findViewById<Button>(R.id.run)
        button.setOnClickListener {
            val n = runs.text.toString().toIntOrNull()?.coerceIn(1, 10000) ?: 100
            val t = threads.text.toString().toIntOrNull()?.coerceIn(1, 16) ?: 4
            button.isEnabled = false
            report.text = "Running $n runs on $t thread(s)…"
            worker.execute {
                val text = runCatching { bench(n, t) }.getOrElse { "Error: ${it.message}" }
                runOnUiThread { report.text = text; button.isEnabled = true }
            }
        }
    }

    private fun bench(n: Int, threads: Int): String {
        LiteRtModel.open(this, threads).use { m ->
            val rnd = Random(0)
            val px = ByteArray(1024 * 768 * 3).also { rnd.nextBytes(it) }
            val img = RgbImage(1024, 768, px)
            val input = Preprocess.apply(img, m.card.spec)
            repeat(WARMUP) { m.run(input) }
            val infer = DoubleArray(n) {
                val t0 = SystemClock.elapsedRealtimeNanos()
                m.run(input)
                (SystemClock.elapsedRealtimeNanos() - t0) / 1e6
            }
            val prep = DoubleArray(minOf(n, 50)) {
                val t0 = SystemClock.elapsedRealtimeNanos()
                Preprocess.apply(img, m.card.spec)
                (SystemClock.elapsedRealtimeNanos() - t0) / 1e6
            }
            return "${m.card.name} · ${m.inputType} · $threads thread(s)\n\n" +
                line("inference", LatencyStats.of(infer)) + line("preprocess", LatencyStats.of(prep))
        }
    }

    private fun line(what: String, s: LatencyStats): String =
        "%-10s n=%d  mean %.2f ms  p50 %.2f  p90 %.2f  (min %.2f, max %.2f)\n".format(what, s.n, s.meanMs, s.p50Ms, s.p90Ms, s.minMs, s.maxMs)

    override fun onDestroy() {
        worker.shutdownNow()
        super.onDestroy()
    }

    companion object {
        const val WARMUP = 5
    }
}
