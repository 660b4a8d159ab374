//! libstdc++'s `std::sort` and `std::partial_sort`, step for step: they are
//! not stable, and llama.cpp's samplers walk candidates in the order they
//! leave, so equal keys (ties, NaN) must land where libstdc++ puts them.

/// Below this, introsort leaves the range to insertion sort.
const THRESHOLD: usize = 16;

/// `std::sort(v, less)`.
pub fn sort<T: Copy>(v: &mut [T], less: &impl Fn(&T, &T) -> bool) {
    if v.len() > 1 {
        let depth = 2 * (usize::BITS - 1 - v.len().leading_zeros()) as usize;
        introsort_loop(v, depth, less);
        final_insertion_sort(v, less);
    }
}

/// `std::partial_sort(v, v + middle, v + len, less)`: the `middle` least
/// first, in order.
pub fn partial_sort<T: Copy>(v: &mut [T], middle: usize, less: &impl Fn(&T, &T) -> bool) {
    if middle == 0 {
        return;
    }
    make_heap(&mut v[..middle], less);
    for i in middle..v.len() {
        if less(&v[i], &v[0]) {
            pop_heap(v, middle, i, less);
        }
    }
    for end in (1..middle).rev() {
        pop_heap(v, end, end, less);
    }
}

fn introsort_loop<T: Copy>(v: &mut [T], mut depth: usize, less: &impl Fn(&T, &T) -> bool) {
    let mut len = v.len();
    while len > THRESHOLD {
        if depth == 0 {
            partial_sort(&mut v[..len], len, less);
            return;
        }
        depth -= 1;
        let cut = partition_pivot(&mut v[..len], less);
        introsort_loop(&mut v[cut..len], depth, less);
        len = cut;
    }
}

fn partition_pivot<T: Copy>(v: &mut [T], less: &impl Fn(&T, &T) -> bool) -> usize {
    let (mid, last) = (v.len() / 2, v.len() - 1);
    move_median_to_first(v, 1, mid, last, less);
    let pivot = v[0];
    let (mut first, mut last) = (1, v.len());
    loop {
        while first < v.len() && less(&v[first], &pivot) {
            first += 1;
        }
        last -= 1;
        while less(&pivot, &v[last]) {
            last -= 1;
        }
        if first >= last {
            return first;
        }
        v.swap(first, last);
        first += 1;
    }
}

fn move_median_to_first<T: Copy>(v: &mut [T], a: usize, b: usize, c: usize, less: &impl Fn(&T, &T) -> bool) {
    let median = if less(&v[a], &v[b]) {
        match () {
            _ if less(&v[b], &v[c]) => b,
            _ if less(&v[a], &v[c]) => c,
            _ => a,
        }
    } else if less(&v[a], &v[c]) {
        a
    } else if less(&v[b], &v[c]) {
        c
    } else {
        b
    };
    v.swap(0, median);
}

fn final_insertion_sort<T: Copy>(v: &mut [T], less: &impl Fn(&T, &T) -> bool) {
    for i in 1..v.len() {
        if i < THRESHOLD && less(&v[i], &v[0]) {
            let x = v[i];
            v.copy_within(0..i, 1);
            v[0] = x;
        } else {
            linear_insert(v, i, less);
        }
    }
}

/// `__unguarded_linear_insert` (guarded here: a comparison that is not a
/// strict order must not run off the front).
fn linear_insert<T: Copy>(v: &mut [T], mut i: usize, less: &impl Fn(&T, &T) -> bool) {
    let x = v[i];
    while i > 0 && less(&x, &v[i - 1]) {
        v[i] = v[i - 1];
        i -= 1;
    }
    v[i] = x;
}

fn make_heap<T: Copy>(v: &mut [T], less: &impl Fn(&T, &T) -> bool) {
    if v.len() < 2 {
        return;
    }
    for parent in (0..=(v.len() - 2) / 2).rev() {
        let x = v[parent];
        adjust_heap(v, parent, v.len(), x, less);
    }
}

/// `__pop_heap(first, first + len, first + result)`.
fn pop_heap<T: Copy>(v: &mut [T], len: usize, result: usize, less: &impl Fn(&T, &T) -> bool) {
    let x = v[result];
    v[result] = v[0];
    adjust_heap(v, 0, len, x, less);
}

fn adjust_heap<T: Copy>(v: &mut [T], mut hole: usize, len: usize, x: T, less: &impl Fn(&T, &T) -> bool) {
    let top = hole;
    let mut child = hole;
    while len > 0 && child < (len - 1) / 2 {
        child = 2 * (child + 1);
        if less(&v[child], &v[child - 1]) {
            child -= 1;
        }
        v[hole] = v[child];
        hole = child;
    }
    if len.is_multiple_of(2) && len >= 2 && child == (len - 2) / 2 {
        child = 2 * (child + 1);
        v[hole] = v[child - 1];
        hole = child - 1;
    }
    let mut parent = hole.saturating_sub(1) / 2;
    while hole > top && less(&v[parent], &x) {
        v[hole] = v[parent];
        hole = parent;
        parent = hole.saturating_sub(1) / 2;
    }
    v[hole] = x;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_like_a_sort() {
        let mut x: u64 = 1;
        let mut v: Vec<u32> = (0..5000)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (x >> 40) as u32 % 300
            })
            .collect();
        let mut want = v.clone();
        want.sort();
        let mut p = v.clone();
        sort(&mut v, &|a, b| a < b);
        assert_eq!(v, want);
        partial_sort(&mut p, 40, &|a, b| a < b);
        assert_eq!(p[..40], want[..40]);
    }
}
