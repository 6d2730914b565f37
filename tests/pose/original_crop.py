"""A deliberately plain transcription of the original's crop, to test the library's vectorised one.

Transcribed line by line from ``crop`` / ``transform`` / ``getTransform`` in ``src/util/img.lua``
of the Torch7 training code and from torch/image's C functions ``scaleLinear_rowcol`` /
``scaleBilinear`` / ``rotateBilinear``: loops over single pixels, Lua's 1-based inclusive ranges
kept as they are, C ``float`` arithmetic as ``f32(...)`` after every operation and C ``double``
as Python floats. Slow; for small images only.
"""

import math

import numpy as np


def f32(value):
    """A C ``float``: every float operation of the C code is rounded to float32."""
    return np.float32(value)


def original_get_transform(center, scale, rot, res):
    """The Torch7 getTransform, transcribed: scale, translate, then rotate -rot about the crop centre."""
    h = 200 * scale
    t = np.eye(3)
    t[0, 0] = t[1, 1] = res / h
    t[0, 2] = res * (-center[0] / h + 0.5)
    t[1, 2] = res * (-center[1] / h + 0.5)
    if rot != 0:
        ang = -rot * math.pi / 180
        r = np.array([[math.cos(ang), -math.sin(ang), 0], [math.sin(ang), math.cos(ang), 0], [0, 0, 1]])
        t_ = np.array([[1, 0, -res / 2], [0, 1, -res / 2], [0, 0, 1]])
        t_inv = np.array([[1, 0, res / 2], [0, 1, res / 2], [0, 0, 1]])
        t = t_inv @ r @ t_ @ t
    return t


def original_transform(pt, center, scale, rot, res, invert):
    """``transform``: the 1-based point minus 1, through the (inverse) matrix, + 1e-4, ``:int()``, + 1."""
    t = original_get_transform(center, scale, rot, res)
    if invert:
        t = np.linalg.inv(t)
    new_point = t @ np.array([pt[0] - 1, pt[1] - 1, 1.0])
    return [int(new_point[0] + 1e-4) + 1, int(new_point[1] + 1e-4) + 1]  # int() truncates toward 0 like :int()


def scale_linear_rowcol(src, dst_len):
    """``Main_scaleLinear_rowcol`` on a list of float32 values: a new list of ``dst_len`` values."""
    src_len = len(src)
    dst = [f32(0)] * dst_len
    if dst_len > src_len:
        scale = f32(f32(src_len - 1) / f32(dst_len - 1))  # (float)(src_len - 1) / (dst_len - 1)
        if src_len == 1:
            for di in range(dst_len - 1):
                dst[di] = src[0]
        else:
            for di in range(dst_len - 1):
                si_f = f32(f32(di) * scale)  # si_f = di * scale
                si_i = int(si_f)  # si_i = (long)si_f
                si_f = f32(si_f - f32(si_i))  # si_f -= si_i
                dst[di] = f32(f32(f32(1 - si_f) * src[si_i]) + f32(si_f * src[si_i + 1]))
        dst[dst_len - 1] = src[src_len - 1]
    elif dst_len < src_len:
        si0_i, si0_f = 0, f32(0)
        scale = f32(f32(src_len) / f32(dst_len))  # (float)src_len / dst_len
        for di in range(dst_len):
            si1_f = f32(f32(di + 1) * scale)  # si1_f = (di + 1) * scale
            si1_i = int(si1_f)
            si1_f = f32(si1_f - f32(si1_i))
            acc = f32(f32(1 - si0_f) * src[si0_i])  # acc = (1 - si0_f) * src[si0_i]
            n = f32(1 - si0_f)
            for si in range(si0_i + 1, si1_i):  # for (si = si0_i + 1; si < si1_i; si++)
                acc = f32(acc + src[si])
                n = f32(n + 1)
            if si1_i < src_len:
                acc = f32(acc + f32(si1_f * src[si1_i]))
                n = f32(n + si1_f)
            dst[di] = f32(acc / n)
            si0_i, si0_f = si1_i, si1_f
    else:
        for i in range(dst_len):
            dst[i] = src[i]
    return dst


def scale_bilinear(img, width, height):
    """``Main_scaleBilinear`` of a (C, H, W) float32 array: rows to ``width`` first, then columns."""
    depth, src_height, _ = img.shape
    out = np.zeros((depth, height, width), np.float32)
    for k in range(depth):
        tmp = np.zeros((src_height, width), np.float32)  # Ttmp: src_height x dst_width
        for j in range(src_height):
            tmp[j, :] = scale_linear_rowcol(list(img[k, j, :]), width)
        for i in range(width):
            out[k, :, i] = scale_linear_rowcol(list(tmp[:, i]), height)
    return out


def rotate_bilinear(img, theta):
    """``Main_rotateBilinear`` of a (C, H, W) float32 array by ``theta`` radians (a C float)."""
    depth, src_height, src_width = img.shape
    theta = float(f32(theta))  # float theta = luaL_checknumber(L, 3)
    dst = np.zeros_like(img)
    xc = float(f32(src_width / 2.0))  # float xc = src_width/2.0
    yc = float(f32(src_height / 2.0))
    for j in range(src_height):
        jd = float(f32(j))
        for i in range(src_width):
            id_ = float(f32(i))
            # ri, rj are `real` (float); the right-hand sides are double (cos of a double)
            ri = f32(math.cos(theta) * float(f32(id_ - xc)) - math.sin(theta) * float(f32(jd - yc)))
            rj = f32(math.cos(theta) * float(f32(jd - yc)) + math.sin(theta) * float(f32(id_ - xc)))
            ii_0 = int(math.floor(ri))
            ii_1 = ii_0 + 1
            jj_0 = int(math.floor(rj))
            jj_1 = jj_0 + 1
            wi = float(f32(ri - f32(ii_0)))  # wi = ri - ii_0, a float
            wj = float(f32(rj - f32(jj_0)))
            ii_0 += int(xc)
            ii_1 += int(xc)
            jj_0 += int(yc)
            jj_1 += int(yc)
            blank = ii_1 > src_width - 1 or jj_1 > src_height - 1 or ii_0 < 0 or jj_0 < 0
            for k in range(depth):
                if blank:
                    dst[k, j, i] = 0  # rotated corners are blank
                else:
                    dst[k, j, i] = f32((1.0 - wi) * (1.0 - wj) * float(img[k, jj_0, ii_0])
                                       + wi * (1.0 - wj) * float(img[k, jj_0, ii_1])
                                       + (1.0 - wi) * wj * float(img[k, jj_1, ii_0])
                                       + wi * wj * float(img[k, jj_1, ii_1]))
    return dst


def original_crop(img, center, scale, rot, res):
    """``crop(img, center, scale, rot, res)`` of a (C, H, W) float32 array in [0, 1] -> (C, res, res)."""
    ul = original_transform([1, 1], center, scale, 0, res, True)
    br = original_transform([res + 1, res + 1], center, scale, 0, res, True)
    # pad = math.floor(torch.norm((ul - br):float())/2 - (br[1]-ul[1])/2)
    pad = math.floor(math.sqrt((ul[0] - br[0]) ** 2 + (ul[1] - br[1]) ** 2) / 2 - (br[0] - ul[0]) / 2)
    if rot != 0:
        ul = [ul[0] - pad, ul[1] - pad]
        br = [br[0] + pad, br[1] + pad]
    new_dim = (img.shape[0], br[1] - ul[1], br[0] - ul[0])
    new_img = np.zeros(new_dim, np.float32)
    ht, wd = img.shape[1], img.shape[2]
    # 1-based inclusive ranges, as in the Lua
    new_x = (max(1, -ul[0] + 2), min(br[0], wd + 1) - ul[0])
    new_y = (max(1, -ul[1] + 2), min(br[1], ht + 1) - ul[1])
    old_x = (max(1, ul[0]), min(br[0], wd + 1) - 1)
    old_y = (max(1, ul[1]), min(br[1], ht + 1) - 1)
    if new_x[0] <= new_x[1] and new_y[0] <= new_y[1]:  # the Lua fails on a box wholly outside the image
        new_img[:, new_y[0] - 1:new_y[1], new_x[0] - 1:new_x[1]] = img[:, old_y[0] - 1:old_y[1], old_x[0] - 1:old_x[1]]
    if rot != 0:
        new_img = rotate_bilinear(new_img, rot * math.pi / 180)
        # newImg:sub(1, C, pad, newDim[2] - pad, pad, newDim[3] - pad), 1-based inclusive
        new_img = new_img[:, pad - 1:new_dim[1] - pad, pad - 1:new_dim[2] - pad]
    return scale_bilinear(new_img, res, res)  # image.scale(newImg, res, res)
