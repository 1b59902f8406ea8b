package org.edgederm.demo

import android.content.Intent
import android.graphics.Color
import android.net.Uri
import android.os.Bundle
import android.view.View
import android.widget.Button
import android.widget.CheckBox
import android.widget.ImageView
import android.widget.TextView
import androidx.activity.result.contract.ActivityResultContracts
import androidx.appcompat.app.AppCompatActivity
import androidx.core.content.FileProvider
import org.edgederm.core.Classification
import org.edgederm.core.Classifier
import java.io.File
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors

/**
 * Pick or take a photo → the card's preprocessing (and TTA views) → LiteRT → probabilities, the
 * card's decision rule, and a melanoma flag. The "not a medical device" notice is always on screen.
 */
class MainActivity : AppCompatActivity() {
    private val worker: ExecutorService = Executors.newSingleThreadExecutor()
    private var model: LiteRtModel? = null
    private var pendingCapture: Uri? = null

    private lateinit var info: TextView
    private lateinit var photo: ImageView
    private lateinit var flag: TextView
    private lateinit var result: TextView
    private lateinit var chart: BarChartView
    private lateinit var tta: CheckBox

    private val pick = registerForActivityResult(ActivityResultContracts.GetContent()) { uri -> uri?.let(::classify) }
    private val capture = registerForActivityResult(ActivityResultContracts.TakePicture()) { ok ->
        val uri = pendingCapture
        if (ok && uri != null) classify(uri)
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        info = findViewById(R.id.model_info)
        photo = findViewById(R.id.photo)
        flag = findViewById(R.id.flag)
        result = findViewById(R.id.result)
        chart = findViewById(R.id.chart)
        tta = findViewById(R.id.tta)
        findViewById<Button>(R.id.pick).setOnClickListener { pick.launch("image/*") }
        findViewById<Button>(R.id.camera).setOnClickListener { takePhoto() }
        findViewById<Button>(R.id.benchmark).setOnClickListener { startActivity(Intent(this, BenchmarkActivity::class.java)) }

        model = try {
            LiteRtModel.open(this)
        } catch (e: java.io.FileNotFoundException) {
            info.text = getString(R.string.no_model)
            null
        } catch (e: Exception) {
            info.text = "Cannot use this model: ${e.message}"
            null
        }
        model?.let { m ->
            val c = m.card
            val views = c.ttaViews
            tta.text = "${getString(R.string.tta)} (${views.size}: ${views.joinToString()})"
            tta.isEnabled = views.size > 1
            val rule = if (c.decision.rule == "priority_thresholds") {
                "thresholds " + c.decision.priority.filter { it in c.decision.thresholds }
                    .joinToString { "$it ≥ %.3f".format(c.decision.thresholds[it]) } + ", else argmax" +
                    (c.decision.fallbackFired?.let { " (calibration fallback: $it)" } ?: "")
            } else "argmax"
            info.text = "Model: ${c.name} · ${c.classes.size} classes · input ${c.spec.height}×${c.spec.width} " +
                "${c.spec.resize}/${c.spec.interpolation.key} · ${m.inputType}\nDecision: $rule"
        }
    }

    private fun takePhoto() {
        val dir = File(cacheDir, "captures").apply { mkdirs() }
        val uri = FileProvider.getUriForFile(this, "$packageName.files", File(dir, "capture.jpg"))
        pendingCapture = uri
        capture.launch(uri)
    }

    private fun classify(uri: Uri) {
        val m = model ?: return
        val views = if (tta.isChecked) m.card.ttaViews else listOf("identity")
        result.text = "Running…"
        flag.visibility = View.GONE
        worker.execute {
            val outcome = runCatching {
                // The card's decode rule (decode_size); 0 = every pixel (exact_decode).
                val minSide = m.card.spec.decodeSize() ?: 0
                val (img, bmp) = ImageDecoding.decode(contentResolver, uri, minSide)
                val t0 = System.nanoTime()
                val c = Classifier.classify(img, m.card, views) { x -> m.run(x) }
                Triple(bmp, c, (System.nanoTime() - t0) / 1e6)
            }
            runOnUiThread {
                outcome.onSuccess { (bmp, c, ms) -> show(bmp, c, ms) }
                    .onFailure { result.text = "Error: ${it.message}" }
            }
        }
    }

    private fun show(bmp: android.graphics.Bitmap, c: Classification, ms: Double) {
        val card = model!!.card
        photo.setImageBitmap(bmp)
        chart.show(card.classes, c.probabilities, c.decided)
        val name = card.classes[c.decided]
        val why = c.firedBy?.let { "its probability reached the card's threshold (%.3f)".format(card.decision.thresholds[it]) }
            ?: if (card.decision.rule == "priority_thresholds") "no threshold was reached: most probable class (fallback)" else "most probable class"
        result.text = "Decision: $name — $why.\n${c.views.size} view(s), %.0f ms on this phone.".format(ms)
        val mel = card.melanomaIndex
        if (mel >= 0) {
            flag.visibility = View.VISIBLE
            if (c.melanoma(card)) {
                flag.setBackgroundColor(Color.rgb(200, 40, 40))
                flag.setTextColor(Color.WHITE)
                flag.text = "MELANOMA FLAG: this image is flagged for melanoma (P = %.1f%%). See a dermatologist.".format(100 * c.probabilities[mel])
            } else {
                flag.setBackgroundColor(Color.rgb(230, 230, 230))
                flag.setTextColor(Color.DKGRAY)
                flag.text = "No melanoma flag (P(MEL) = %.1f%%). This does not rule melanoma out.".format(100 * c.probabilities[mel])
            }
        }
    }

    override fun onDestroy() {
        worker.shutdownNow()
        model?.close()
        super.onDestroy()
    }
}
