// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;
using Hyve.Vmm;
using Hyve.Vmm.Native;

namespace Hyve.Kvm;

/// <summary>
/// One KVM virtual machine for one run of a <see cref="Vm"/>: guest memory slots mirrored from the
/// guest-physical map, split irqchip (KVM's local APICs, everything else Hyve's), and user-space MSR exits.
/// A guest reset disposes it and creates a fresh one over the same memory.
/// </summary>
public sealed unsafe class KvmBackend : ICpuBackend, IDirtyPageSource
{
    // Below the 16 MiB a boot ROM may take under 4 GiB, as QEMU places them.
    private const ulong IdentityMapAddress = 0xfeffc000;
    private const ulong TssAddress = 0xfeffd000;

    private readonly Dictionary<GuestMapping, uint> _slots = [];
    private readonly Stack<uint> _freeSlots = new();
    private uint _nextSlot;
    private readonly object _gate = new();
    private readonly KvmIrqRoutes _routes = null!;

    /// <summary>Creates the KVM VM for <paramref name="vm"/> and maps its memory.</summary>
    public KvmBackend(Vm vm)
    {
        Vm = vm;
        System = KvmSystem.Open();
        VmFd = System.CreateVm();
        if (VmFd < 0) throw new IOException($"KVM_CREATE_VM: {Libc.ErrnoText(Marshal.GetLastPInvokeError())}");
        try
        {
            ulong idmap = IdentityMapAddress;
            Libc.Ioctl(VmFd, KvmApi.SetIdentityMapAddr, &idmap);
            Libc.Ioctl(VmFd, KvmApi.SetTssAddr, unchecked((nint)TssAddress));
            // Reserve one GSI route per IOAPIC pin: KVM reads their MSI form to know which vectors are
            // level-triggered and must exit with KVM_EXIT_IOAPIC_EOI.
            EnableCap(KvmApi.CapSplitIrqchip, (ulong)vm.Ioapic.PinCount, required: true);
            UserSpaceMsr = EnableCap(KvmApi.CapX86UserSpaceMsr, KvmApi.MsrExitReasonUnknown, required: false);
            vm.Memory.DirtySource = this; // segments with a dirty log (the framebuffer) are asked through KVM_GET_DIRTY_LOG
            foreach (var m in vm.Memory.Mappings) OnMappingChanged(m, true);
            vm.Memory.MappingChanged += OnMappingChanged;
            _routes = new KvmIrqRoutes(VmFd, vm.Ioapic);
            vm.Ioapic.EntryChanged += OnIoapicEntryChanged;
            _routes.Update();
            // MSI-X vectors sent from device threads: an eventfd write each (KVM_IRQFD) instead of KVM_SIGNAL_MSI.
            vm.MsiRoutes.Attach(_routes);
            // Virtio doorbells: KVM signals the device's eventfd itself, so a queue notify costs no exit.
            vm.IoEventFds.Attach(AssignIoEventFd);
        }
        catch
        {
            Libc.Close(VmFd);
            throw;
        }
    }

    /// <inheritdoc/>
    public string Name => "kvm";

    /// <summary>The VM this backend runs.</summary>
    public Vm Vm { get; }

    /// <summary>The KVM system handle.</summary>
    public KvmSystem System { get; }

    /// <summary>The KVM VM descriptor.</summary>
    public int VmFd { get; }

    /// <summary>True when unknown MSRs exit to user space (so -w can ignore them).</summary>
    public bool UserSpaceMsr { get; }

    /// <inheritdoc/>
    public IVcpuBackend CreateVcpu(int id) => new KvmVcpu(this, id);

    /// <summary>How many vCPUs have built the user-space fallback engine (built on a vCPU's first instruction KVM could
    /// not run; about 1 MiB of decoder tables each).</summary>
    public int FallbackEngines => _fallbackEngines;
    private int _fallbackEngines;

    internal void CountFallbackEngine() => Interlocked.Increment(ref _fallbackEngines);

    // KVM_IOEVENTFD; a refusal leaves the write to exit to the device's handler, which signals the same eventfd.
    private bool AssignIoEventFd(IoEventFd e, bool assign)
    {
        var arg = KvmIoEventFd.From(e, assign);
        return Libc.Ioctl(VmFd, KvmApi.IoEventFd, &arg) == 0;
    }

    /// <summary>Delivers an MSI through KVM_SIGNAL_MSI (the IOAPIC, HPET and PCI devices end here).</summary>
    public void DeliverMsi(ulong address, ulong data)
    {
        var msi = new KvmMsi { AddressLo = (uint)address, AddressHi = (uint)(address >> 32), Data = (uint)data };
        Libc.Ioctl(VmFd, KvmApi.SignalMsi, &msi);
    }

    private bool EnableCap(int cap, ulong arg0, bool required)
    {
        var ec = new KvmEnableCap { Cap = (uint)cap };
        ec.Args[0] = arg0;
        if (Libc.Ioctl(VmFd, KvmApi.EnableCap, &ec) == 0) return true;
        if (required) throw new IOException($"KVM_ENABLE_CAP({cap}): {Libc.ErrnoText(Marshal.GetLastPInvokeError())}");
        return false;
    }

    private void OnIoapicEntryChanged(int pin) => _routes.Update();

    private void OnMappingChanged(GuestMapping m, bool added)
    {
        lock (_gate)
        {
            uint slot;
            if (added)
            {
                slot = _freeSlots.Count > 0 ? _freeSlots.Pop() : _nextSlot++;
                _slots[m] = slot;
            }
            else if (!_slots.Remove(m, out slot)) return;
            var region = new KvmUserspaceMemoryRegion
            {
                Slot = slot,
                Flags = SlotFlags(m.Prot, m.Segment.DirtyLog is not null),
                GuestPhysAddr = m.Gpa,
                MemorySize = added ? m.Length : 0,
                UserspaceAddr = (ulong)(m.Segment.Host + m.SegOffset),
            };
            if (Libc.Ioctl(VmFd, KvmApi.SetUserMemoryRegion, &region) != 0)
                throw new IOException($"KVM_SET_USER_MEMORY_REGION for {m.Segment.Name} at 0x{m.Gpa:x}: {Libc.ErrnoText(Marshal.GetLastPInvokeError())}");
            if (!added) _freeSlots.Push(slot);
        }
    }

    /// <summary>The flags of a slot: read-only for ROM, dirty logging for a segment with a dirty log.</summary>
    internal static uint SlotFlags(MemProt prot, bool logDirty) =>
        ((prot & MemProt.Write) == 0 ? KvmApi.MemReadonly : 0) | (logDirty && (prot & MemProt.Write) != 0 ? KvmApi.MemLogDirtyPages : 0);

    /// <summary>ORs slot bitmap <paramref name="slotBits"/> (bit N = page N of a mapping that starts at page
    /// <paramref name="segPage"/> of its segment and spans <paramref name="slotPages"/> pages) into the segment's
    /// bitmap <paramref name="segBits"/>; pages past the segment's bitmap are ignored.</summary>
    internal static void MergeSlotBitmap(ReadOnlySpan<ulong> slotBits, long segPage, long slotPages, Span<ulong> segBits)
    {
        for (int w = 0; w < slotBits.Length; w++)
        {
            ulong v = slotBits[w];
            while (v != 0)
            {
                int b = global::System.Numerics.BitOperations.TrailingZeroCount(v);
                v &= v - 1;
                long page = (long)w * 64 + b;
                if (page >= slotPages) break;
                long p = segPage + page;
                if ((ulong)p < (ulong)segBits.Length * 64) segBits[(int)(p >> 6)] |= 1ul << (int)(p & 63);
            }
        }
    }

    /// <inheritdoc/>
    public void CollectDirty(MemSegment segment, Span<ulong> pages)
    {
        lock (_gate)
        {
            foreach (var (m, slot) in _slots)
            {
                if (m.Segment != segment || (m.Prot & MemProt.Write) == 0) continue;
                long slotPages = (long)(m.Length >> 12);
                var bits = new ulong[(slotPages + 63) / 64];
                fixed (ulong* b = bits)
                {
                    var args = new KvmDirtyLogArgs { Slot = slot, DirtyBitmap = (ulong)b };
                    if (Libc.Ioctl(VmFd, KvmApi.GetDirtyLog, &args) != 0)
                    {
                        // The log cannot be read: say every page of the slot changed rather than miss a write.
                        Array.Fill(bits, ulong.MaxValue);
                    }
                }
                MergeSlotBitmap(bits, (long)(m.SegOffset >> 12), slotPages, pages);
            }
        }
    }

    /// <summary>Closes the KVM VM (memory stays with <see cref="Vm.Memory"/>).</summary>
    public void Dispose()
    {
        if (Vm.Memory.DirtySource == this) Vm.Memory.DirtySource = null;
        Vm.IoEventFds.Detach();
        Vm.MsiRoutes.Detach();
        Vm.Memory.MappingChanged -= OnMappingChanged;
        Vm.Ioapic.EntryChanged -= OnIoapicEntryChanged;
        Libc.Close(VmFd);
    }
}
