package org.edgederm.core

import org.json.JSONArray
import org.json.JSONObject
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import kotlin.math.abs
import kotlin.system.exitProcess

/*
 * The Kotlin core against the Python runtime, on golden vectors written by
 * edgederm.demo.golden.write_golden (real images, a real LiteRT artifact and its card).
 *
 * Tolerances:
 * - preprocessing: EXACT (0). The resize is a port of Pillow's fixed-point arithmetic and the
 *   normalisation repeats numpy's float32 operations in the same order, so every value must be
 *   bit-identical; a one-grey-level resize slip shows up as >= 1/255/std ~ 0.017 and fails.
 * - probabilities: 1e-12 per view (softmax in double of the same float32 outputs; exp() may
 *   differ by an ulp between numpy and the JVM) and 1e-9 after averaging over the TTA views.
 * - decisions and card fields: exact.
 *
 * The last line is "N passed, M failed"; the exit code is 1 if anything failed.
 */

private var passed = 0
private var failed = 0

private fun check(name: String, ok: Boolean, detail: String = "") {
    if (ok) {
        passed++
        println("ok   $name${if (detail.isEmpty()) "" else " ($detail)"}")
    } else {
        failed++
        println("FAIL $name${if (detail.isEmpty()) "" else ": $detail"}")
    }
}

private fun guard(name: String, body: () -> Unit) {
    try {
        body()
    } catch (e: Throwable) {
        check(name, false, "${e.javaClass.simpleName}: ${e.message}")
    }
}

private fun expectCardError(name: String, contains: String, body: () -> Unit) {
    try {
        body()
        check(name, false, "no CardException")
    } catch (e: CardException) {
        check(name, e.message!!.contains(contains), e.message!!)
    }
}

private fun readF32(file: File): FloatArray {
    val buf = ByteBuffer.wrap(file.readBytes()).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer()
    return FloatArray(buf.remaining()).also { buf.get(it) }
}

private fun doubles(a: JSONArray): DoubleArray = DoubleArray(a.length()) { a.getDouble(it) }

private fun strings(a: JSONArray): List<String> = List(a.length()) { a.getString(it) }

/** (max |a-b|, index of the first differing value or -1). */
private fun compare(a: FloatArray, b: FloatArray): Pair<Double, Int> {
    var m = 0.0
    var first = -1
    for (i in a.indices) {
        val d = abs(a[i].toDouble() - b[i].toDouble())
        if (d > m) m = d
        if (d > 0 && first < 0) first = i
    }
    return Pair(m, first)
}

private fun maxDiff(a: DoubleArray, b: DoubleArray): Double {
    var m = 0.0
    for (i in a.indices) m = maxOf(m, abs(a[i] - b[i]))
    return m
}

fun checkInput(name: String, got: ModelInput, expectedFile: File, spec: PreprocessSpec) {
    val want = readF32(expectedFile)
    if (got.values.size != want.size || !got.shape.contentEquals(spec.shape)) {
        check(name, false, "size ${got.values.size} vs ${want.size}, shape ${got.shape.toList()}")
        return
    }
    val (m, first) = compare(got.values, want)
    check(name, m == 0.0, if (m == 0.0) "${want.size} values identical" else "max diff $m, first at $first: ${got.values[first]} vs ${want[first]}")
}

fun selfChecks() {
    // float16 conversion: reference bit patterns of IEEE binary16.
    val cases = listOf(1.0f to 0x3C00, 65504f to 0x7BFF, 65520f to 0x7C00, -2.0f to 0xC000,
        0.1f to 0x2E66, 5.9604645e-8f to 0x0001, 2.9802322e-8f to 0x0000, 6.1035156e-5f to 0x0400,
        1.0009766f to 0x3C01, 1.00048828125f to 0x3C00, 1.00146484375f to 0x3C02)
    val bad = cases.filter { (f, h) -> (Half.fromFloat(f).toInt() and 0xFFFF) != h }
    check("float16 rounding (round to nearest even, subnormals, overflow)", bad.isEmpty(), "bad: $bad")
    check("float16 round trip", (0 until 0x7C00 step 7).all { h -> Half.fromFloat(Half.toFloat(h.toShort())).toInt() and 0xFFFF == h })
    // Softmax does not overflow on large logits and sums to one.
    val p = softmax(doubleArrayOf(1000.0, 0.0, -1000.0))
    check("softmax is stable on large logits", p[0] == 1.0 && p[1] == 0.0 && p.all { !it.isNaN() })
    check("argmax takes the first of ties", argmax(doubleArrayOf(0.2, 0.4, 0.4)) == 1)
    // numpy: np.percentile(np.arange(1, 11), [50, 90]) == [5.5, 9.1]; mean 5.5
    val st = LatencyStats.of(DoubleArray(10) { (10 - it).toDouble() })
    check("latency percentiles interpolate like numpy", abs(st.p50Ms - 5.5) < 1e-12 && abs(st.p90Ms - 9.1) < 1e-12 && st.meanMs == 5.5,
        "p50 ${st.p50Ms} p90 ${st.p90Ms}")
    // The runtime's _dequantize: ((q - zp) * scale) in float32.
    val dq = dequantize(intArrayOf(-128, 0, 127), 0.05f, -3)
    check("dequantize like the runtime", dq.contentEquals(doubleArrayOf(((-125f) * 0.05f).toDouble(), (3f * 0.05f).toDouble(), (130f * 0.05f).toDouble())))
}

fun cardChecks(goldenCard: JSONObject) {
    fun mutated(edit: (JSONObject) -> Unit): JSONObject = JSONObject(goldenCard.toString()).also(edit)
    expectCardError("card: newer schema refused", "newer") { Card.fromJson(mutated { it.put("schema_version", 99) }) }
    expectCardError("card: unknown spec field refused", "unknown preprocessing fields") {
        Card.fromJson(mutated { it.getJSONObject("preprocessing").put("gamma", 2.2) })
    }
    expectCardError("card: newer spec version refused", "newer") {
        Card.fromJson(mutated { it.getJSONObject("preprocessing").put("version", 2) })
    }
    expectCardError("card: unknown decision rule refused", "unknown decision rule") {
        Card.fromJson(mutated { it.getJSONObject("decision").put("rule", "vote") })
    }
    expectCardError("card: threshold for a missing class refused", "not a class") {
        Card.fromJson(mutated {
            val d = it.getJSONObject("decision")
            d.put("thresholds", JSONObject().put("XYZ", 0.5)); d.put("priority", JSONArray().put("XYZ"))
        })
    }
    expectCardError("card: unknown TTA view refused", "unknown TTA views") {
        Card.fromJson(mutated { it.put("tta", JSONObject().put("views", JSONArray().put("identity").put("shear"))) })
    }
    expectCardError("card: stacking ensemble refused", "logit-stacking") {
        Card.fromJson(mutated { it.getJSONObject("model").put("combine", "logit_stacking") })
    }
    expectCardError("card: integer spec without scale refused", "input_scale") {
        Card.fromJson(mutated { it.getJSONObject("preprocessing").put("dtype", "int8") })
    }
    expectCardError("card: not JSON refused", "not valid JSON") { Card.parse("{\"schema\": ") }
}

fun main(args: Array<String>) {
    if (args.size != 1) {
        System.err.println("usage: GoldenTest GOLDEN_DIR   (written by edgederm.demo.golden.write_golden)")
        exitProcess(2)
    }
    val dir = File(args[0])
    val index = JSONObject(File(dir, "golden.json").readText())
    guard("self checks") { selfChecks() }

    // -- card -----------------------------------------------------------------------------------
    val cardText = File(dir, index.getString("card")).readText()
    val card = Card.parse(cardText)
    val exp = index.getJSONObject("expected_card")
    check("card: name", card.name == exp.getString("name"), card.name)
    check("card: classes", card.classes == strings(exp.getJSONArray("classes")), card.classes.toString())
    check("card: output kind", card.output == exp.getString("output"), card.output)
    check("card: TTA views", card.ttaViews == strings(exp.getJSONArray("tta_views")), card.ttaViews.toString())
    check("card: decision rule", card.decision.rule == exp.getString("decision_rule"), card.decision.rule)
    val specs = index.getJSONObject("specs")
    check("card: preprocessing spec", card.spec == PreprocessSpec.fromJson(specs.getJSONObject("card")), card.spec.toString())
    guard("card: refusals") { cardChecks(JSONObject(cardText)) }
    if (!index.isNull("model")) {
        guard("card embedded in the .tflite") {
            val embedded = TfliteCard.read(ByteBuffer.wrap(File(dir, index.getString("model")).readBytes()))
            check("card embedded in the .tflite equals card.json", embedded != null && embedded.trim() == cardText.trim(),
                "${embedded?.length ?: 0} chars")
        }
    }
    expectCardError("tflite: not a flatbuffer refused", "TFL3") { TfliteCard.read(ByteBuffer.wrap(ByteArray(64))) }

    // -- images: preprocessing for every spec, TTA views, probabilities, decision ---------------
    val images = index.getJSONArray("images")
    for (i in 0 until images.length()) {
        val e = images.getJSONObject(i)
        val tag = "${e.getString("name")} (${e.getString("source")}, ${e.getInt("width")}x${e.getInt("height")})"
        val img = RgbImage(e.getInt("width"), e.getInt("height"), File(dir, e.getString("rgb")).readBytes())
        val inputs = e.getJSONObject("inputs")
        for (key in inputs.keys()) {
            guard("$tag preprocess $key") {
                val spec = PreprocessSpec.fromJson(specs.getJSONObject(key))
                val t0 = System.nanoTime()
                val got = Preprocess.apply(img, spec)
                val ms = (System.nanoTime() - t0) / 1e6
                checkInput("$tag preprocess $key [${"%.1f".format(ms)} ms]", got, File(dir, inputs.getString(key)), spec)
            }
        }
        guard("$tag classify") {
            val views = e.getJSONObject("views")
            val viewNames = card.ttaViews
            val raws = viewNames.map { doubles(views.getJSONObject(it).getJSONArray("raw")) }
            var call = 0
            // The "model" replays Python's raw outputs, after checking it is fed Python's input.
            val result = Classifier.classify(img, card) { input ->
                val v = viewNames[call]
                checkInput("$tag view $v input", input, File(dir, views.getJSONObject(v).getString("input")), card.spec)
                val pyProbs = doubles(views.getJSONObject(v).getJSONArray("probabilities"))
                val d = maxDiff(card.toProbabilities(raws[call]), pyProbs)
                check("$tag view $v softmax", d <= 1e-12, "max diff $d")
                raws[call++]
            }
            check("$tag all ${viewNames.size} views run", call == viewNames.size, "$call calls")
            val want = doubles(e.getJSONArray("probabilities"))
            val d = maxDiff(result.probabilities, want)
            check("$tag TTA probabilities vs Python runtime", d <= 1e-9, "max diff $d")
            val pyDecided = e.getInt("decision")
            check("$tag decision vs Python runtime", result.decided == pyDecided,
                "${card.classes[result.decided]} (fired by ${result.firedBy ?: "argmax"}) vs ${e.getString("decision_class")}")
            check("$tag decision on Python's probabilities", card.decision.decide(want, card.classes).index == pyDecided)
        }
    }

    // -- decision rule on random vectors ----------------------------------------------------------
    val cases = index.getJSONObject("decision_cases")
    val probs = cases.getJSONArray("probs")
    val rules = cases.getJSONObject("rules")
    for (key in rules.keys()) {
        guard("decision rule '$key'") {
            val r = rules.getJSONObject(key)
            val decision = Decision.fromJson(r.getJSONObject("decision"))
            val expected = r.getJSONArray("expected")
            var wrong = 0
            var fired = 0
            for (j in 0 until probs.length()) {
                val out = decision.decide(doubles(probs.getJSONArray(j)), card.classes)
                if (out.index != expected.getInt(j)) wrong++
                if (out.firedBy != null) fired++
            }
            check("decision rule '$key' on ${probs.length()} vectors", wrong == 0, "$wrong differ from Python, $fired by a threshold")
        }
    }

    println("$passed passed, $failed failed")
    exitProcess(if (failed == 0) 0 else 1)
}
