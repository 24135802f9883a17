// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Pci;

namespace Hyve.Virtio;

/// <summary>
/// virtio-rnd, the entropy device (virtio 1.2 section 5.4; bhyve's pci_virtio_rnd.c): one request queue whose
/// device-writable buffers are filled from getrandom(2). No configuration and no features of its own.
/// </summary>
public sealed unsafe class VirtioRng : VirtioPciDevice
{
    /// <summary>Virtio device type 4.</summary>
    public const int Type = 4;

    private VirtioRng(PciDeviceContext ctx) : base(ctx, Type, 0x1005, 0xff, 0x00, queues: 1, queueSize: 64, deviceFeatures: 0, configSize: 0)
        => StartIo();

    /// <summary>Factory for <c>virtio-rnd</c>.</summary>
    public static PciDevice Create(PciDeviceContext ctx) => new VirtioRng(ctx);

    /// <inheritdoc/>
    protected override uint HandleChain(Virtqueue queue, DescriptorChain chain)
    {
        uint total = 0;
        for (int i = chain.FirstWritable; i < chain.Count; i++)
        {
            if (!chain.TryGetSpan(i, out var span)) break;
            fixed (byte* p = span)
            {
                // getrandom never returns short for requests up to 256 bytes; larger ones may, and the rest stays unwritten.
                nint n = VirtioNative.GetRandom(p, (nuint)span.Length, 0);
                if (n <= 0) break;
                total += (uint)n;
                if (n < span.Length) break;
            }
        }
        return total;
    }
}
