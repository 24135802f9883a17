// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Vmm;

/// <summary>
/// A table of 65,536 references indexed by a 16-bit key (an I/O port; a PCI bus/slot/function), kept as 256 pages of
/// 256 slots allocated on first store. A machine uses a few pages, so the table costs a few KiB instead of 512 KiB of
/// resident memory, and a lookup is still two array loads.
/// </summary>
public sealed class SparseTable<T> where T : class
{
    private const int PageBits = 8;
    private const int PageMask = (1 << PageBits) - 1;
    private readonly T?[]?[] _pages = new T?[]?[1 << (16 - PageBits)];

    /// <summary>The entry at <paramref name="key"/>, or null; storing null into a missing page allocates nothing.</summary>
    public T? this[int key]
    {
        get => _pages[(key >> PageBits) & 0xff] is { } page ? page[key & PageMask] : null;
        set
        {
            ref var page = ref _pages[(key >> PageBits) & 0xff];
            if (page is null)
            {
                if (value is null) return;
                page = new T?[1 << PageBits];
            }
            page[key & PageMask] = value;
        }
    }
}
