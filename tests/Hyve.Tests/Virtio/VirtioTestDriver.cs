// SPDX-License-Identifier: BSD-2-Clause
using Xunit;
using System.Buffers.Binary;
using Hyve.Config;
using Hyve.Pci;
using Hyve.Tests.Pci;
using Hyve.Virtio;
using Hyve.Vmm;

namespace Hyve.Tests.Virtio;

/// <summary>A guest-side virtio driver for unit tests: writes rings into the rig's memory and drives the modern BAR.</summary>
public sealed class VirtioTestDriver : IDisposable
{
    public const ulong RingBase = 0x10_0000;   // queue q's rings at RingBase + q * 0x10000
    public const ulong DataBase = 0x40_0000;   // buffers the tests hand out
    public readonly PciTestRig Rig = new();
    public readonly VirtioPciDevice Device;
    private readonly IMmioDevice _bar;
    private readonly ushort[] _nextDesc = new ushort[40];
    private readonly ushort[] _availIdx = new ushort[40];

    public VirtioTestDriver(string emulation, ConfigTree? root = null, params (string, string)[] conf)
    {
        Rig.Bus.AddFromConfig([new PciSlotConfig(0, 3, 0, emulation, conf.ToDictionary(c => c.Item1, c => c.Item2))],
            PciDeviceRegistry.CreateDefault(), root);
        Rig.Bus.Build();
        Device = (VirtioPciDevice)Rig.Bus.Find(0, 3, 0)!;
        _bar = Device.Bars[VirtioPciDevice.ModernBar]!.Handler!;
    }

    public GuestMemory Memory => Rig.Memory;

    public ulong Read(int offset, int size) => _bar.MmioRead((ulong)offset, size);
    public void Write(int offset, int size, ulong value) => _bar.MmioWrite((ulong)offset, size, value);
    public byte Status => (byte)Read(0x14, 1);

    /// <summary>ACKNOWLEDGE, DRIVER, features (offered ∩ wanted), FEATURES_OK; returns whether FEATURES_OK stuck.</summary>
    public bool Negotiate(ulong want)
    {
        Write(0x14, 1, VirtioPciDevice.StatusAcknowledge | VirtioPciDevice.StatusDriver);
        ulong offered = Features();
        ulong f = offered & want;
        Write(0x08, 4, 0); Write(0x0c, 4, (uint)f);
        Write(0x08, 4, 1); Write(0x0c, 4, (uint)(f >> 32));
        Write(0x14, 1, VirtioPciDevice.StatusAcknowledge | VirtioPciDevice.StatusDriver | VirtioPciDevice.StatusFeaturesOk);
        return (Status & VirtioPciDevice.StatusFeaturesOk) != 0;
    }

    public ulong Features()
    {
        Write(0x00, 4, 0);
        ulong lo = Read(0x04, 4);
        Write(0x00, 4, 1);
        return lo | Read(0x04, 4) << 32;
    }

    public static ulong Desc(int q) => RingBase + (ulong)q * 0x10000;
    public static ulong Avail(int q) => Desc(q) + 0x4000;
    public static ulong Used(int q) => Desc(q) + 0x8000;

    /// <summary>Sets queue q up at its fixed addresses with <paramref name="size"/> entries and enables it.</summary>
    public void SetupQueue(int q, ushort size, ushort vector = 0xffff)
    {
        Write(0x16, 2, (ulong)q);
        Write(0x18, 2, size);
        Write(0x1a, 2, vector);
        Write(0x20, 8, Desc(q));
        Write(0x28, 8, Avail(q));
        Write(0x30, 8, Used(q));
        Write(0x1c, 2, 1);
    }

    public void DriverOk() => Write(0x14, 1, (ulong)(Status | VirtioPciDevice.StatusDriverOk));

    public Span<byte> Mem(ulong gpa, int len)
    {
        Assert.True(Memory.TryGetSpan(gpa, len, MemProt.Read, out var s));
        return s;
    }

    /// <summary>Writes descriptor <paramref name="i"/> of queue q.</summary>
    public void SetDesc(int q, int i, ulong addr, uint len, ushort flags, ushort next)
    {
        var d = Mem(Desc(q) + (ulong)i * 16, 16);
        BinaryPrimitives.WriteUInt64LittleEndian(d, addr);
        BinaryPrimitives.WriteUInt32LittleEndian(d[8..], len);
        BinaryPrimitives.WriteUInt16LittleEndian(d[12..], flags);
        BinaryPrimitives.WriteUInt16LittleEndian(d[14..], next);
    }

    /// <summary>Chains the buffers (addr, len, writable) into fresh descriptors and makes the chain available; returns its head.</summary>
    public ushort Offer(int q, ushort size, params (ulong Addr, uint Len, bool Write)[] bufs)
    {
        ushort head = _nextDesc[q];
        for (int i = 0; i < bufs.Length; i++)
        {
            int d = (_nextDesc[q] + i) % size;
            bool last = i == bufs.Length - 1;
            SetDesc(q, d, bufs[i].Addr, bufs[i].Len, (ushort)((last ? 0 : Virtqueue.DescNext) | (bufs[i].Write ? Virtqueue.DescWrite : 0)),
                (ushort)((d + 1) % size));
        }
        _nextDesc[q] = (ushort)((_nextDesc[q] + bufs.Length) % size);
        MakeAvailable(q, size, head);
        return head;
    }

    public void MakeAvailable(int q, ushort size, ushort head)
    {
        var a = Mem(Avail(q), 6 + 2 * size);
        BinaryPrimitives.WriteUInt16LittleEndian(a[(4 + 2 * (_availIdx[q] % size))..], head);
        _availIdx[q]++;
        BinaryPrimitives.WriteUInt16LittleEndian(a[2..], _availIdx[q]);
    }

    public void Notify(int q) => Write(VirtioPciDevice.NotifyOffset + VirtioPciDevice.NotifyMultiplier * q, 2, (ulong)q);

    public ushort UsedIdx(int q) => BinaryPrimitives.ReadUInt16LittleEndian(Mem(Used(q) + 2, 2));

    public (uint Id, uint Len) UsedElem(int q, int i, ushort size)
    {
        var e = Mem(Used(q) + 4 + (ulong)(8 * (i % size)), 8);
        return (BinaryPrimitives.ReadUInt32LittleEndian(e), BinaryPrimitives.ReadUInt32LittleEndian(e[4..]));
    }

    /// <summary>Notifies and waits (up to 5 s) until the used index reaches <paramref name="idx"/>.</summary>
    public void NotifyAndWait(int q, ushort idx)
    {
        Notify(q);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (UsedIdx(q) != idx && sw.ElapsedMilliseconds < 5000) Thread.Sleep(1);
        Assert.Equal(idx, UsedIdx(q));
    }

    /// <summary>Waits (up to 5 s) for <paramref name="cond"/>.</summary>
    public static bool WaitFor(Func<bool> cond)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (!cond() && sw.ElapsedMilliseconds < 5000) Thread.Sleep(1);
        return cond();
    }

    public void Dispose()
    {
        Device.Dispose();
        Rig.Dispose();
    }
}
