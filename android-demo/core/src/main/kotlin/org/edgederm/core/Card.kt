package org.edgederm.core

import org.json.JSONException
import org.json.JSONObject

/**
 * What the app needs from the artifact card (`edgederm/card.py`, `card.schema.json`): the class
 * list, the preprocessing spec, the TTA views, the decision rule and the model's output kind.
 * Anything the app cannot honour (a newer schema, an ensemble stacker, a segmentation stage) is
 * refused with a [CardException] instead of silently producing different numbers.
 */
class Card(
    val name: String,
    val classes: List<String>,
    val spec: PreprocessSpec,
    val ttaViews: List<String>,
    val decision: Decision,
    /** "logits" (apply softmax) or "probabilities". */
    val output: String,
    val json: JSONObject
) {
    /** The melanoma class the app flags, if the taxonomy has one. */
    val melanomaIndex: Int
        get() = classes.indexOfFirst { it.equals("MEL", ignoreCase = true) || it.equals("melanoma", ignoreCase = true) }

    /** Model outputs (one view) → probabilities. */
    fun toProbabilities(outputs: DoubleArray): DoubleArray = if (output == "logits") softmax(outputs) else outputs.copyOf()

    /** Validation metrics, when the card carries them (shown on the result screen). */
    val metrics: JSONObject? get() = json.optJSONObject("metrics")

    companion object {
        const val SCHEMA_VERSION = 1

        fun parse(text: String): Card {
            val o = try {
                JSONObject(text)
            } catch (e: JSONException) {
                throw CardException("card is not valid JSON: ${e.message}")
            }
            return fromJson(o)
        }

        fun fromJson(o: JSONObject): Card {
            try {
                if (o.optString("schema") != "edgederm.card") throw CardException("not an edgederm card (schema '${o.optString("schema")}')")
                val version = o.getInt("schema_version")
                if (version > SCHEMA_VERSION) {
                    throw CardException("card schema version $version is newer than this app supports ($SCHEMA_VERSION): update the app")
                }
                val task = o.optString("task", "classification")
                if (task != "classification") throw CardException("the app runs classifiers, this card's task is '$task'")
                val cls = o.getJSONArray("classes")
                val classes = List(cls.length()) { cls.getString(it) }
                if (classes.isEmpty() || classes.toSet().size != classes.size) throw CardException("classes must be non-empty and unique: $classes")
                val model = o.getJSONObject("model")
                if (model.has("segmenter") && !model.isNull("segmenter")) {
                    throw CardException("cards with a segmentation stage are not supported by the app")
                }
                if (model.optString("combine", "weighted_mean") == "logit_stacking") {
                    throw CardException("cards with a logit-stacking ensemble are not supported by the app")
                }
                val output = model.optString("output", "logits")
                if (output != "logits" && output != "probabilities") throw CardException("unknown model output '$output'")
                val views = o.optJSONObject("tta")?.optJSONArray("views")
                val ttaViews = if (views == null) listOf("identity") else List(views.length()) { views.getString(it) }
                val unknown = ttaViews.filter { it !in Tta.VIEWS }
                if (unknown.isNotEmpty()) throw CardException("unknown TTA views $unknown; known: ${Tta.VIEWS}")
                val decision = Decision.fromJson(o.getJSONObject("decision"))
                decision.checkClasses(classes)
                val spec = PreprocessSpec.fromJson(o.getJSONObject("preprocessing"))
                return Card(o.getString("name"), classes, spec, ttaViews, decision, output, o)
            } catch (e: JSONException) {
                throw CardException("invalid card: ${e.message}")
            }
        }
    }
}
