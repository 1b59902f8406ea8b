package org.edgederm.core

import org.json.JSONObject
import kotlin.math.exp

/** Numerically stable softmax in double (`edgederm.runtime.base.softmax`). */
fun softmax(logits: DoubleArray): DoubleArray {
    var m = Double.NEGATIVE_INFINITY
    for (v in logits) if (v > m) m = v
    val e = DoubleArray(logits.size) { exp(logits[it] - m) }
    val s = e.sum()
    return DoubleArray(e.size) { e[it] / s }
}

/** Index of the largest value; the first one on ties, like numpy's argmax. */
fun argmax(p: DoubleArray): Int {
    var best = 0
    for (i in 1 until p.size) if (p[i] > p[best]) best = i
    return best
}

/** Mean of per-view probability vectors (TTA), summed in view order like the Python runtime. */
fun meanProbabilities(perView: List<DoubleArray>): DoubleArray {
    require(perView.isNotEmpty()) { "no views" }
    val acc = DoubleArray(perView[0].size)
    for (p in perView) for (i in acc.indices) acc[i] += p[i]
    return DoubleArray(acc.size) { acc[it] / perView.size }
}

/**
 * The card's decision rule (`edgederm/decision.py`). `argmax`, or `priority_thresholds`: walk
 * [priority] and return the first class whose probability reaches its threshold, else fall back
 * to argmax. [fallbackFired] is the calibration's note (which relaxed level of the threshold search
 * was needed), shown to the user as is.
 */
class Decision(
    val rule: String,
    val thresholds: LinkedHashMap<String, Double>,
    val priority: List<String>,
    val fallbackFired: String?
) {
    /** The decided class and the threshold that fired (null: argmax, by rule or as fallback). */
    data class Outcome(val index: Int, val firedBy: String?)

    init {
        if (rule != "argmax" && rule != "priority_thresholds") throw CardException("unknown decision rule '$rule'")
    }

    /** Refuse thresholds the rule would use for a class the model does not have (as Python does). */
    fun checkClasses(classes: List<String>) {
        for (name in priority) {
            if (name in thresholds && name !in classes) {
                throw CardException("threshold for '$name', which is not a class: $classes")
            }
        }
    }

    fun decide(probs: DoubleArray, classes: List<String>): Outcome {
        require(probs.size == classes.size) { "${probs.size} probabilities for ${classes.size} classes" }
        if (rule == "priority_thresholds") {
            for (name in priority) {
                val t = thresholds[name] ?: continue
                val c = classes.indexOf(name)
                if (c < 0) throw CardException("threshold for '$name', which is not a class: $classes")
                if (probs[c] >= t) return Outcome(c, name)
            }
        }
        return Outcome(argmax(probs), null)
    }

    companion object {
        fun fromJson(o: JSONObject): Decision {
            val rule = o.optString("rule", "argmax")
            val thresholds = LinkedHashMap<String, Double>() // org.json (Android) keeps key order
            o.optJSONObject("thresholds")?.let { t -> for (k in t.keys()) thresholds[k] = t.getDouble(k) }
            val prio = o.optJSONArray("priority")
            val priority = if (prio == null) thresholds.keys.toList() else List(prio.length()) { prio.getString(it) }
            val fired = if (o.isNull("fallback_fired")) null else o.getString("fallback_fired")
            return Decision(rule, thresholds, priority, fired)
        }
    }
}
