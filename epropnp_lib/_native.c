/* Fused CPU kernels of the PnP solver and its proposals (epropnp_lib/native.py calls them; the tensor code
 * they replace stays the reference and the fallback, and tests/lib/test_native.py checks one
 * against the other).
 *
 * - init6: one pass per problem, in double precision, of what init.init_6dof does with ~220
 *   batched tensor ops: normalised image points, the w^2-weighted centroid, the DLT moments,
 *   the DLT's rotation block (block elimination), Gram-Schmidt, one Gauss-Newton step on SO(3)
 *   of the algebraic error, the quaternion, and the planarity test that decides whether the
 *   homography candidate (tensor code) is needed.
 * - init4: init.init_4dof, the linear least squares in (cos, sin, t) and the translation
 *   re-solved for the normalised yaw.
 * - state: cost.point_terms with the Jacobian reduced by cost.augmented_normal_matrix, for
 *   6DoF and 4DoF poses: the robust cost, the augmented normal matrix and the depths.
 * - acg_fit: Tyler's fixed point of distributions.angular_central_gaussian (the AMIS
 *   orientation proposal's fit), with safe_cholesky's jitter and fallback.
 * The formulas and their derivations are those of the Python functions named in the comments.
 *
 * Conventions: row-major matrices; quaternions (w, x, y, z), Hamilton; 6DoF poses (t, q), 4DoF
 * poses (t, yaw) with the yaw about the camera y axis.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Layout of one problem's output row (float64). */
enum {
    OUT_POSE = 0,     /* t (3), q (4) */
    OUT_NEED = 7,     /* 1.0: the homography candidate is needed (near-planar or N < 6) */
    OUT_ATA = 8,      /* DLT normal matrix (12 x 12), dlt_normal_matrix */
    OUT_CENTRE = 152, /* w^2-weighted centroid (3) */
    OUT_STRIDE = 155,
};

/* Points per chunk of the state kernel (its two passes' arrays: 28 x STATE_CHUNK doubles). */
#define STATE_CHUNK 32

static inline void cross3(const double *a, const double *b, double *out)
{
    out[0] = a[1] * b[2] - a[2] * b[1];
    out[1] = a[2] * b[0] - a[0] * b[2];
    out[2] = a[0] * b[1] - a[1] * b[0];
}

static inline double dot3(const double *a, const double *b)
{
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}

/* init._inv3_sym: rows r_{i+1} x r_{i+2} over the determinant (symmetric m). */
static void inv3_sym(const double *m, double *out)
{
    double adj[9];
    cross3(m + 3, m + 6, adj);
    cross3(m + 6, m, adj + 3);
    cross3(m, m + 3, adj + 6);
    const double det = dot3(adj, m);
    for (int i = 0; i < 9; ++i) out[i] = adj[i] / det;
}

/* K's 2x2 block inverted (i00..i11), the principal point and the focal lengths. */
typedef struct {
    double k00, k11, cx, cy, i00, i01, i10, i11;
} InvK;

/* Normalised camera coordinates K^-1 (px, py, 1) of a pixel. */
static inline void normalized(const InvK *ik, double px, double py, double *u, double *v)
{
    const double dx = px - ik->cx, dy = py - ik->cy;
    *u = ik->i00 * dx + ik->i01 * dy;
    *v = ik->i10 * dx + ik->i11 * dy;
}

/* geometry.rotations.quat_to_matrix (unit q). */
static void quat_to_matrix(const double *q, double *r)
{
    const double w = q[0], x = q[1], y = q[2], z = q[3];
    r[0] = 1.0 - 2.0 * (y * y + z * z);
    r[1] = 2.0 * (x * y - w * z);
    r[2] = 2.0 * (x * z + w * y);
    r[3] = 2.0 * (x * y + w * z);
    r[4] = 1.0 - 2.0 * (x * x + z * z);
    r[5] = 2.0 * (y * z - w * x);
    r[6] = 2.0 * (x * z - w * y);
    r[7] = 2.0 * (y * z + w * x);
    r[8] = 1.0 - 2.0 * (x * x + y * y);
}

/* geometry.rotations.matrix_to_quat: Shepperd's best-conditioned row, w >= 0. */
static void matrix_to_quat(const double *r, double *q)
{
    double rows[4][4] = {
        {1.0 + r[0] + r[4] + r[8], r[7] - r[5], r[2] - r[6], r[3] - r[1]},
        {r[7] - r[5], 1.0 + r[0] - r[4] - r[8], r[3] + r[1], r[2] + r[6]},
        {r[2] - r[6], r[3] + r[1], 1.0 - r[0] + r[4] - r[8], r[7] + r[5]},
        {r[3] - r[1], r[2] + r[6], r[7] + r[5], 1.0 - r[0] - r[4] + r[8]},
    };
    int best = 0;
    for (int k = 1; k < 4; ++k)
        if (rows[k][k] > rows[best][best]) best = k;
    const double *b = rows[best];
    double norm = sqrt(b[0] * b[0] + b[1] * b[1] + b[2] * b[2] + b[3] * b[3]);
    norm = norm > 1e-12 ? norm : 1e-12;
    const double sign = b[0] < 0.0 ? -1.0 : 1.0;
    for (int k = 0; k < 4; ++k) q[k] = sign * b[k] / norm;
}

/* init._orthonormalize: Gram-Schmidt on the first two rows; the identity if not finite. */
static void orthonormalize(const double *m, double *r)
{
    const double n0 = sqrt(dot3(m, m));
    double r0[3] = {m[0] / n0, m[1] / n0, m[2] / n0};
    const double d = dot3(m + 3, r0);
    double r1[3] = {m[3] - d * r0[0], m[4] - d * r0[1], m[5] - d * r0[2]};
    const double n1 = sqrt(dot3(r1, r1));
    for (int i = 0; i < 3; ++i) r1[i] /= n1;
    double r2[3];
    cross3(r0, r1, r2);
    if (!(isfinite(r2[0]) && isfinite(r2[1]) && isfinite(r2[2]))) {
        static const double eye[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
        memcpy(r, eye, sizeof eye);
        return;
    }
    memcpy(r, r0, sizeof r0);
    memcpy(r + 3, r1, sizeof r1);
    memcpy(r + 6, r2, sizeof r2);
}

/* Solves the d x d system a x = b (d <= 5; a is overwritten) by LU with partial pivoting, as
 * torch.linalg.solve; a singular system gives non-finite entries. */
static void solve_lu(int d, double *a, const double *b, double *x)
{
    double y[5];
    memcpy(y, b, (size_t)d * sizeof(double));
    for (int k = 0; k < d; ++k) {
        int p = k;
        for (int i = k + 1; i < d; ++i)
            if (fabs(a[d * i + k]) > fabs(a[d * p + k])) p = i;
        if (p != k) {
            for (int j = 0; j < d; ++j) {
                const double tmp = a[d * k + j];
                a[d * k + j] = a[d * p + j];
                a[d * p + j] = tmp;
            }
            const double tmp = y[k];
            y[k] = y[p];
            y[p] = tmp;
        }
        for (int i = k + 1; i < d; ++i) {
            const double f = a[d * i + k] / a[d * k + k];
            for (int j = k; j < d; ++j) a[d * i + j] -= f * a[d * k + j];
            y[i] -= f * y[k];
        }
    }
    for (int i = d - 1; i >= 0; --i) {
        double s = y[i];
        for (int j = i + 1; j < d; ++j) s -= a[d * i + j] * x[j];
        x[i] = s / a[d * i + i];
    }
}

/* init.refine_on_so3 (one Gauss-Newton step of the algebraic error over rotations, translation
 * eliminated), then t = b - R centre: writes (t, q) to pose. */
static void refine_on_so3(const double *ata, const double *rot0, const double *centre,
                          double *pose)
{
    double m_rr[81], m_rb[27], m_bb[9], inv_bb[9], sol[27], schur[81];
    for (int r = 0; r < 3; ++r)
        for (int c = 0; c < 3; ++c) {
            const int i = 3 * r + c, ai = 4 * r + c;
            for (int r2 = 0; r2 < 3; ++r2) {
                for (int c2 = 0; c2 < 3; ++c2) m_rr[9 * i + 3 * r2 + c2] = ata[12 * ai + 4 * r2 + c2];
                m_rb[3 * i + r2] = ata[12 * ai + 4 * r2 + 3];
            }
        }
    for (int r = 0; r < 3; ++r)
        for (int r2 = 0; r2 < 3; ++r2) m_bb[3 * r + r2] = ata[12 * (4 * r + 3) + 4 * r2 + 3];
    inv3_sym(m_bb, inv_bb);
    /* sol = m_bb^-1 m_rb^T (3 x 9); schur = m_rr - m_rb sol (9 x 9) */
    for (int a = 0; a < 3; ++a)
        for (int i = 0; i < 9; ++i)
            sol[9 * a + i] = inv_bb[3 * a] * m_rb[3 * i] + inv_bb[3 * a + 1] * m_rb[3 * i + 1]
                             + inv_bb[3 * a + 2] * m_rb[3 * i + 2];
    for (int i = 0; i < 9; ++i)
        for (int j = 0; j < 9; ++j)
            schur[9 * i + j] = m_rr[9 * i + j] - (m_rb[3 * i] * sol[j] + m_rb[3 * i + 1] * sol[9 + j]
                                                  + m_rb[3 * i + 2] * sol[18 + j]);
    /* jac (9 x 4): column k < 3 is vec([e_k]_x R) (column j of R crossed: e_k x R[:, j]),
     * column 3 is vec(R). */
    double jac[36];
    for (int j = 0; j < 3; ++j) {
        const double c0 = rot0[j], c1 = rot0[3 + j], c2 = rot0[6 + j];
        /* e_0 x c = (0, -c2, c1); e_1 x c = (c2, 0, -c0); e_2 x c = (-c1, c0, 0) */
        const double col[3][3] = {{0.0, -c2, c1}, {c2, 0.0, -c0}, {-c1, c0, 0.0}};
        for (int i = 0; i < 3; ++i) {
            for (int k = 0; k < 3; ++k) jac[4 * (3 * i + j) + k] = col[k][i];
            jac[4 * (3 * i + j) + 3] = rot0[3 * i + j];
        }
    }
    double sj[36], normal[16];
    for (int i = 0; i < 9; ++i)
        for (int k = 0; k < 4; ++k) {
            double s = 0.0;
            for (int l = 0; l < 9; ++l) s += schur[9 * i + l] * jac[4 * l + k];
            sj[4 * i + k] = s;
        }
    for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) {
            double s = 0.0;
            for (int l = 0; l < 9; ++l) s += jac[4 * l + a] * sj[4 * l + b];
            normal[4 * a + b] = s;
        }
    const double h[9] = {normal[0], normal[1], normal[2], normal[4], normal[5],
                         normal[6], normal[8], normal[9], normal[10]};
    double hinv[9], step[3];
    inv3_sym(h, hinv);
    for (int a = 0; a < 3; ++a)
        step[a] = -(hinv[3 * a] * normal[3] + hinv[3 * a + 1] * normal[7] + hinv[3 * a + 2] * normal[11]);
    /* quat_exp(step): (cos(theta / 2), sin(theta / 2) / theta * step) */
    const double theta = sqrt(dot3(step, step));
    const double k = theta > 0.0 ? sin(0.5 * theta) / theta : 0.5;
    const double dq[4] = {cos(0.5 * theta), k * step[0], k * step[1], k * step[2]};
    double dr[9], rot1[9];
    quat_to_matrix(dq, dr);
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
            rot1[3 * i + j] = dr[3 * i] * rot0[j] + dr[3 * i + 1] * rot0[3 + j] + dr[3 * i + 2] * rot0[6 + j];
    double err1 = 0.0;
    for (int i = 0; i < 9; ++i) {
        double s = 0.0;
        for (int j = 0; j < 9; ++j) s += schur[9 * i + j] * rot1[j];
        err1 += rot1[i] * s;
    }
    const double *rot = err1 <= normal[15] ? rot1 : rot0; /* False for NaN */
    double *t = pose, *q = pose + 3;
    for (int a = 0; a < 3; ++a) {
        double b = 0.0;
        for (int i = 0; i < 9; ++i) b -= sol[9 * a + i] * rot[i];
        t[a] = b - dot3(rot + 3 * a, centre);
    }
    matrix_to_quat(rot, q);
}

#define T float
#define NAME(f) f##_f32
#include "_native_kernels.h"
#undef T
#undef NAME
#define T double
#define NAME(f) f##_f64
#include "_native_kernels.h"
#undef T
#undef NAME

/* ---- distributions.angular_central_gaussian.AngularCentralGaussian.fit (Tyler's fixed point) */

/* Lower Cholesky factor l of the symmetric 4x4 a (its lower triangle read, as LAPACK's); 0 when
 * every pivot is positive and the factor finite, 1 otherwise (a NaN fails). */
static int chol4(const double *a, double *l)
{
    memset(l, 0, 16 * sizeof(double));
    for (int j = 0; j < 4; ++j) {
        double d = a[5 * j];
        for (int k = 0; k < j; ++k) d -= l[4 * j + k] * l[4 * j + k];
        if (!(d > 0.0)) return 1;
        const double ljj = sqrt(d);
        l[5 * j] = ljj;
        for (int i = j + 1; i < 4; ++i) {
            double s = a[4 * i + j];
            for (int k = 0; k < j; ++k) s -= l[4 * i + k] * l[4 * j + k];
            l[4 * i + j] = s / ljj;
        }
    }
    for (int i = 0; i < 16; ++i)
        if (!isfinite(l[i])) return 1;
    return 0;
}

/* distributions._common.safe_cholesky for one 4x4 matrix: retries with jitter 10^r I added
 * (r = 1..4), then the diagonal factor sqrt(max(diag, jitter)) (1 where not finite). */
static void safe_chol4(const double *mat, double jitter, double *l)
{
    if (!chol4(mat, l)) return;
    double m[16];
    double scale = jitter;
    for (int r = 1; r <= 4; ++r) {
        scale *= 10.0;
        memcpy(m, mat, sizeof m);
        for (int i = 0; i < 4; ++i) m[5 * i] += scale;
        if (!chol4(m, l)) return;
    }
    memset(l, 0, 16 * sizeof(double));
    for (int i = 0; i < 4; ++i) {
        const double v = mat[5 * i];
        const double d = sqrt(isnan(v) ? v : (v > jitter ? v : jitter));
        l[5 * i] = isfinite(d) ? d : 1.0;
    }
}

/* angular_central_gaussian._regularised: symmetrised, trace 4 (the identity where the trace is
 * not finite and positive), plus eps I.  Takes the 10 upper entries (00 01 02 03 11 12 13 22 23
 * 33) of a symmetric sum and writes the full matrix. */
static void regularise4(const double *e, double eps, double *lam)
{
    static const int IDX[4][4] = {{0, 1, 2, 3}, {1, 4, 5, 6}, {2, 5, 7, 8}, {3, 6, 8, 9}};
    const double tr = e[0] + e[4] + e[7] + e[9];
    const int ok = isfinite(tr) && tr > DBL_MIN;
    const double f = ok ? 4.0 / tr : 0.0;
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j)
            lam[4 * i + j] = (ok ? f * e[IDX[i][j]] : (i == j ? 1.0 : 0.0)) + (i == j ? eps : 0.0);
}

/* One element: samples x[k * stride] (unit quaternions, or zero rows for invalid ones) and
 * normalised weights w[k * wstride], k < n; q is scratch of 10 n doubles.  Writes the factor. */
static void acg_fit_one(Py_ssize_t n, const double *x, Py_ssize_t stride, const double *w,
                        Py_ssize_t wstride, int iters, double eps, double *q, double *tril)
{
    /* q[e][k]: the 10 distinct products x_i x_j of sample k (both the quadratic form
     * x^T Lambda^-1 x and the weighted second moment are linear in them). */
    static const int PAIR[10][2] = {{0, 0}, {0, 1}, {0, 2}, {0, 3}, {1, 1},
                                    {1, 2}, {1, 3}, {2, 2}, {2, 3}, {3, 3}};
    for (Py_ssize_t k = 0; k < n; ++k) {
        const double *xk = x + k * stride;
        for (int e = 0; e < 10; ++e) q[e * n + k] = xk[PAIR[e][0]] * xk[PAIR[e][1]];
    }
    double sums[10], lam[16], l[16];
    for (int e = 0; e < 10; ++e) {
        double s = 0.0;
        for (Py_ssize_t k = 0; k < n; ++k) s += w[k * wstride] * q[e * n + k];
        sums[e] = s;
    }
    regularise4(sums, eps, lam);
    for (int it = 0; it < iters; ++it) {
        safe_chol4(lam, eps, l);
        /* P = (L L^T)^-1 = L^-T L^-1 from the inverse of the triangular factor */
        double li[16];
        memset(li, 0, sizeof li);
        for (int j = 0; j < 4; ++j) {
            li[5 * j] = 1.0 / l[5 * j];
            for (int i = j + 1; i < 4; ++i) {
                double s = 0.0;
                for (int k = j; k < i; ++k) s -= l[4 * i + k] * li[4 * k + j];
                li[4 * i + j] = s / l[5 * i];
            }
        }
        double pe[10]; /* x^T P x = sum_e pe[e] q[e]: off-diagonal entries counted twice */
        for (int e = 0; e < 10; ++e) {
            const int a = PAIR[e][0], b = PAIR[e][1];
            double s = 0.0;
            for (int r = 0; r < 4; ++r) s += li[4 * r + a] * li[4 * r + b];
            pe[e] = a == b ? s : 2.0 * s;
        }
        for (int e = 0; e < 10; ++e) sums[e] = 0.0;
        for (Py_ssize_t k = 0; k < n; ++k) {
            double m = 0.0;
            for (int e = 0; e < 10; ++e) m += pe[e] * q[e * n + k];
            const double c = w[k * wstride] / (m > DBL_MIN ? m : DBL_MIN);
            for (int e = 0; e < 10; ++e) sums[e] += c * q[e * n + k];
        }
        regularise4(sums, eps, lam);
    }
    safe_chol4(lam, eps, tril);
}

/* acg_fit(samples, batch, x, w, out, iters, eps): x (samples, batch, 4) and w (samples, batch)
 * contiguous float64 CPU buffers, out (batch, 4, 4) float64.  Releases the GIL. */
static PyObject *py_acg_fit(PyObject *self, PyObject *args)
{
    (void)self;
    Py_ssize_t n, batch;
    unsigned long long px, pw, pout;
    int iters;
    double eps;
    if (!PyArg_ParseTuple(args, "nnKKKid", &n, &batch, &px, &pw, &pout, &iters, &eps))
        return NULL;
    if (n < 1 || batch < 0 || iters < 0) {
        PyErr_SetString(PyExc_ValueError, "acg_fit: samples >= 1, batch >= 0, iters >= 0");
        return NULL;
    }
    const double *x = (const double *)(uintptr_t)px, *w = (const double *)(uintptr_t)pw;
    double *out = (double *)(uintptr_t)pout;
    double *q = PyMem_RawMalloc((size_t)10 * (size_t)n * sizeof(double));
    if (q == NULL) return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t b = 0; b < batch; ++b)
        acg_fit_one(n, x + 4 * b, 4 * batch, w + b, batch, iters, eps, q, out + 16 * b);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(q);
    Py_RETURN_NONE;
}

/* init6(batch, points, x3d, x2d, w2d, cam, out, is_double, planarity): the pointers are
 * addresses of contiguous CPU buffers (float32 or float64 as is_double says, out float64 of
 * batch x OUT_STRIDE).  Releases the GIL. */
static PyObject *py_init6(PyObject *self, PyObject *args)
{
    (void)self;
    Py_ssize_t batch, n;
    unsigned long long px3d, px2d, pw2d, pcam, pout;
    int dbl;
    double planarity;
    if (!PyArg_ParseTuple(args, "nnKKKKKpd", &batch, &n, &px3d, &px2d, &pw2d, &pcam, &pout, &dbl,
                          &planarity))
        return NULL;
    if (batch < 0 || n < 1) {
        PyErr_SetString(PyExc_ValueError, "init6: batch must be >= 0 and points >= 1");
        return NULL;
    }
    const void *x3d = (const void *)(uintptr_t)px3d, *x2d = (const void *)(uintptr_t)px2d;
    const void *w2d = (const void *)(uintptr_t)pw2d, *cam = (const void *)(uintptr_t)pcam;
    double *out = (double *)(uintptr_t)pout;
    const double tiny = dbl ? DBL_MIN : (double)FLT_MIN;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t b = 0; b < batch; ++b) {
        const size_t o3 = (size_t)b * 3 * n, o2 = (size_t)b * 2 * n, oc = (size_t)b * 9;
        double *row = out + (size_t)b * OUT_STRIDE;
        if (dbl)
            init_one_f64(n, (const double *)x3d + o3, (const double *)x2d + o2,
                         (const double *)w2d + o2, (const double *)cam + oc, tiny, planarity, row);
        else
            init_one_f32(n, (const float *)x3d + o3, (const float *)x2d + o2,
                         (const float *)w2d + o2, (const float *)cam + oc, tiny, planarity, row);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* state(batch, points, dof, pose, x, wk, wc, delta, cost, normal, depth, is_double,
 * min_depth): pointers to contiguous CPU buffers of one dtype (float32 or float64): pose (B, 7)
 * for dof 6 or (B, 4) for dof 4, x (3, B, N), wk (2, 2, B, N), wc (2, B, N), delta (B,) or 0 for
 * none; outputs cost (B,), normal (B, dof + 1, dof + 1), depth (B, N).  Releases the GIL. */
static PyObject *py_state(PyObject *self, PyObject *args)
{
    (void)self;
    Py_ssize_t batch, n;
    int dof, dbl;
    unsigned long long ppose, px, pwk, pwc, pdelta, pcost, pnormal, pdepth;
    double min_depth;
    if (!PyArg_ParseTuple(args, "nniKKKKKKKKpd", &batch, &n, &dof, &ppose, &px, &pwk, &pwc,
                          &pdelta, &pcost, &pnormal, &pdepth, &dbl, &min_depth))
        return NULL;
    if (batch < 0 || n < 1 || (dof != 6 && dof != 4)) {
        PyErr_SetString(PyExc_ValueError, "state: batch >= 0, points >= 1 and dof 4 or 6");
        return NULL;
    }
    const void *pose = (const void *)(uintptr_t)ppose, *x = (const void *)(uintptr_t)px;
    const void *wk = (const void *)(uintptr_t)pwk, *wc = (const void *)(uintptr_t)pwc;
    const void *delta = (const void *)(uintptr_t)pdelta;
    void *cost = (void *)(uintptr_t)pcost, *normal = (void *)(uintptr_t)pnormal;
    void *depth = (void *)(uintptr_t)pdepth;
    const double tiny = dbl ? DBL_MIN : (double)FLT_MIN;
    const Py_ssize_t cs = batch * n; /* component stride */
    const size_t pdim = dof == 6 ? 7 : 4, nn = (size_t)(dof + 1) * (size_t)(dof + 1);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t b = 0; b < batch; ++b) {
        const size_t off = (size_t)b * n;
        if (dbl)
            state_one_f64(n, cs, dof, (const double *)pose + pdim * b, (const double *)x + off,
                          (const double *)wk + off, (const double *)wc + off, delta != NULL,
                          delta ? ((const double *)delta)[b] : 0.0, tiny, min_depth,
                          (double *)cost + b, (double *)normal + nn * b, (double *)depth + off);
        else
            state_one_f32(n, cs, dof, (const float *)pose + pdim * b, (const float *)x + off,
                          (const float *)wk + off, (const float *)wc + off, delta != NULL,
                          delta ? (double)((const float *)delta)[b] : 0.0, tiny, min_depth,
                          (float *)cost + b, (float *)normal + nn * b, (float *)depth + off);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* init4(batch, points, x3d, x2d, w2d, cam, out, is_double): contiguous CPU buffers of one dtype;
 * out (B, 4) of that dtype, (t, yaw).  Releases the GIL. */
static PyObject *py_init4(PyObject *self, PyObject *args)
{
    (void)self;
    Py_ssize_t batch, n;
    unsigned long long px3d, px2d, pw2d, pcam, pout;
    int dbl;
    if (!PyArg_ParseTuple(args, "nnKKKKKp", &batch, &n, &px3d, &px2d, &pw2d, &pcam, &pout, &dbl))
        return NULL;
    if (batch < 0 || n < 1) {
        PyErr_SetString(PyExc_ValueError, "init4: batch must be >= 0 and points >= 1");
        return NULL;
    }
    const void *x3d = (const void *)(uintptr_t)px3d, *x2d = (const void *)(uintptr_t)px2d;
    const void *w2d = (const void *)(uintptr_t)pw2d, *cam = (const void *)(uintptr_t)pcam;
    void *out = (void *)(uintptr_t)pout;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t b = 0; b < batch; ++b) {
        const size_t o3 = (size_t)b * 3 * n, o2 = (size_t)b * 2 * n, oc = (size_t)b * 9;
        if (dbl)
            init4_one_f64(n, (const double *)x3d + o3, (const double *)x2d + o2,
                          (const double *)w2d + o2, (const double *)cam + oc,
                          (double *)out + 4 * b);
        else
            init4_one_f32(n, (const float *)x3d + o3, (const float *)x2d + o2,
                          (const float *)w2d + o2, (const float *)cam + oc, (float *)out + 4 * b);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef METHODS[] = {
    {"init6", py_init6, METH_VARARGS, "Fused 6DoF initialisation (see epropnp_lib.native)."},
    {"init4", py_init4, METH_VARARGS, "Fused 4DoF initialisation (see epropnp_lib.native)."},
    {"state", py_state, METH_VARARGS, "Fused cost and normal matrix (epropnp_lib.native)."},
    {"acg_fit", py_acg_fit, METH_VARARGS, "Tyler's fit of the angular central Gaussian."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, "_native", "Fused CPU kernels of the PnP solver.", -1, METHODS,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void)
{
    PyObject *m = PyModule_Create(&MODULE);
    if (m != NULL && PyModule_AddIntConstant(m, "OUT_STRIDE", OUT_STRIDE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
