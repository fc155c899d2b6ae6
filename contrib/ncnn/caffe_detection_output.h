// CaffeDetectionOutput: Caffe SSD's DetectionOutput layer as an ncnn custom layer.
//
// Written for caffenorm's ncnn exporter, which writes SSD's DetectionOutput as a layer of type
// "CaffeDetectionOutput" (ncnn's built-in DetectionOutput does not compute what Caffe computes).
// The result matches caffenorm.caffe.ops.detection.detection_output bit for bit; see README.md.
//
// Usage: copy this header and caffe_detection_output.cpp into your app, then
//
//     ncnn::Net net;
//     register_caffe_detection_output(net);   // before net.load_param()
//     net.load_param("model.param");
//     net.load_model("model.bin");
//
// Layer contract (one image per run, ncnn has no batch axis):
//   bottom 0  loc    read flat: P * L * 4 floats (per prior, per loc class: xmin ymin xmax ymax
//                    deltas), L = 1 if share_location else num_classes
//   bottom 1  conf   read flat: P * num_classes floats (per prior, then class; softmaxed)
//   bottom 2  prior  read flat: P * 4 prior boxes, then P * 4 variances (PriorBox's h=2 mat)
//   top 0            2D mat w=6, h=K: rows [label, score, xmin, ymin, xmax, ymax], labels
//                    ascending, each label by descending score; one row of six -1 when nothing
//                    is kept
//   params  0 num_classes (int, required)        5 eta (float, 1)
//           1 share_location (int, 1)            6 keep_top_k (int, -1 = all)
//           2 background_label_id (int, 0)       7 confidence_threshold (float, -FLT_MAX)
//           3 nms_threshold (float, 0.3)         8 code_type (int, 1 CORNER, 2 CENTER_SIZE,
//           4 top_k (int, -1 = all)                3 CORNER_SIZE; default 2)
//                                                9 variance_encoded_in_target (int, 0)
//
// Plain C++11; depends only on ncnn's headers.

#ifndef CAFFENORM_CAFFE_DETECTION_OUTPUT_H
#define CAFFENORM_CAFFE_DETECTION_OUTPUT_H

#include <vector>

#include "layer.h"
#include "net.h"

class CaffeDetectionOutput : public ncnn::Layer
{
public:
    CaffeDetectionOutput();

    virtual int load_param(const ncnn::ParamDict& pd);

    virtual int forward(const std::vector<ncnn::Mat>& bottom_blobs, std::vector<ncnn::Mat>& top_blobs,
                        const ncnn::Option& opt) const;

public:
    int num_classes;
    int share_location;
    int background_label_id;
    float nms_threshold;
    int top_k;
    float eta;
    int keep_top_k;
    float confidence_threshold;
    int code_type;
    int variance_encoded_in_target;
};

// Creator in the form ncnn::Net::register_custom_layer expects (as DEFINE_LAYER_CREATOR makes).
ncnn::Layer* CaffeDetectionOutput_layer_creator(void* userdata);

// net.register_custom_layer("CaffeDetectionOutput", CaffeDetectionOutput_layer_creator).
// Call it before net.load_param(); returns what register_custom_layer returns (0 on success).
int register_caffe_detection_output(ncnn::Net& net);

#endif // CAFFENORM_CAFFE_DETECTION_OUTPUT_H
