// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm;
using Hyve.Vmm.Io;

namespace Hyve.Kvm;

/// <summary>
/// The xAPIC register page as instructions emulated in hyve's engine see it on KVM, where the local APIC lives in the
/// kernel (split irqchip): reads come from KVM_GET_LAPIC (which computes the timer's current count), writes go back
/// with KVM_SET_LAPIC (which re-derives the priorities, the pending vector and the timer from the page), and the
/// registers whose write is an action do that action as the APIC would: EOI retires the highest in-service vector
/// (and reaches the IOAPIC for a level-triggered one), an ICR write sends the IPI as an interrupt message, a TMICT
/// write restarts the timer. Only the vCPU's own thread uses it, while the vCPU is outside KVM_RUN.
/// </summary>
internal sealed unsafe class KvmLapicWindow(KvmBackend backend, Vm vm, int vcpuFd, int vcpuId)
{
    private const int PageBytes = 1024; // struct kvm_lapic_state: the first 1 KiB of the register page

    /// <summary>Guest-physical base of the register page; <see cref="ulong.MaxValue"/> when the APIC is off or in x2APIC mode.</summary>
    public ulong Base { get; private set; } = ulong.MaxValue;

    /// <summary>Sets the page's place from IA32_APIC_BASE (SDM Vol. 3 11.4.4): only an enabled xAPIC answers on the page.</summary>
    public void SetApicBase(ulong apicBase)
    {
        bool xapic = (apicBase & LapicRegisters.BaseEnable) != 0 && (apicBase & LapicRegisters.BaseX2Apic) == 0;
        Base = xapic ? apicBase & ~0xfffUL : ulong.MaxValue;
    }

    /// <summary>The TPR the last write put there, or -1: the fallback carries it into CR8, which KVM_SET_SREGS
    /// would otherwise write back over it.</summary>
    public int WrittenTpr { get; set; } = -1;

    /// <summary>True when <paramref name="gpa"/> is on the register page.</summary>
    public bool Contains(ulong gpa) => gpa - Base < 0x1000;

    /// <summary>Reads the register at <paramref name="gpa"/>. Registers are 32 bits on 16-byte boundaries; the rest reads 0.</summary>
    public ulong Read(ulong gpa, int size)
    {
        int offset = (int)(gpa - Base);
        int reg = offset & 0xff0, inReg = offset & 0xf;
        if (reg >= PageBytes || inReg >= 4) return 0;
        byte* page = stackalloc byte[PageBytes];
        if (!Get(page)) return 0;
        ulong value = *(uint*)(page + reg) >> (8 * inReg);
        return size >= 4 ? value : value & ((1UL << (8 * size)) - 1);
    }

    /// <summary>Writes the register at <paramref name="gpa"/>. Only aligned 32-bit writes are defined (SDM Vol. 3 11.4.1); others are dropped.</summary>
    public void Write(ulong gpa, int size, ulong value)
    {
        int offset = (int)(gpa - Base);
        int reg = offset & 0xff0;
        if ((offset & 0xf) != 0 || size < 4 || reg >= PageBytes) return;
        uint v = (uint)value;
        byte* page = stackalloc byte[PageBytes];
        if (!Get(page)) return;
        switch (reg)
        {
            case LapicRegisters.Eoi:
                EndOfInterrupt(page);
                return;
            case LapicRegisters.IcrLow:
                *(uint*)(page + reg) = v & ~(1u << 12); // delivery status: idle once sent
                Set(page);
                SendIpi(v, *(uint*)(page + LapicRegisters.IcrHigh));
                return;
            case LapicRegisters.TimerInitialCount:
                // KVM_SET_LAPIC restarts the timer from the current-count register: a new initial count starts there.
                *(uint*)(page + reg) = v;
                *(uint*)(page + LapicRegisters.TimerCurrentCount) = v;
                Set(page);
                return;
            case LapicRegisters.Id or LapicRegisters.Tpr or LapicRegisters.Ldr or LapicRegisters.Dfr or LapicRegisters.Svr
                or LapicRegisters.Esr or LapicRegisters.IcrHigh or LapicRegisters.TimerDivide or LapicRegisters.LvtCmci
                or (>= LapicRegisters.LvtTimer and <= LapicRegisters.LvtError):
                *(uint*)(page + reg) = v;
                if (reg == LapicRegisters.Tpr) WrittenTpr = (int)(v & 0xff);
                Set(page);
                return;
            default:
                return; // read-only registers (version, PPR, ISR, TMR, IRR, current count) ignore writes
        }
    }

    // EOI: the highest vector in service leaves the ISR; a level-triggered one is also an EOI for the IOAPIC.
    private void EndOfInterrupt(byte* page)
    {
        for (int vector = 255; vector >= 0; vector--)
        {
            uint* isr = (uint*)(page + LapicRegisters.Isr + 16 * (vector >> 5));
            uint bit = 1u << (vector & 31);
            if ((*isr & bit) == 0) continue;
            *isr &= ~bit;
            Set(page);
            if ((*(uint*)(page + LapicRegisters.Tmr + 16 * (vector >> 5)) & bit) != 0) vm.Ioapic.EndOfInterrupt(vector);
            return;
        }
    }

    // An ICR write (SDM Vol. 3 11.6.1) as interrupt messages: the destination shorthand becomes destinations, the rest
    // keeps its encoding (vector, delivery mode, destination mode, level, trigger) in Intel's MSI format.
    private void SendIpi(uint low, uint high)
    {
        int mode = (int)(low >> 8) & 7;
        bool level = (low & (1u << 14)) != 0, trigger = (low & (1u << 15)) != 0;
        if (mode == (int)DeliveryMode.Init && !level && trigger) return; // INIT level de-assert: no effect on this APIC
        ulong data = (low & 0xff) | (ulong)mode << 8 | (level ? 1UL << 14 : 0) | (trigger ? 1UL << 15 : 0);
        bool logical = (low & (1u << 11)) != 0;
        uint self = vm.Topology.ApicId(vcpuId);
        switch ((low >> 18) & 3)
        {
            case 0: Deliver(high >> 24, logical, data); break;
            case 1: Deliver(self, false, data); break;
            case 2: Deliver(0xff, false, data); break; // physical 0xFF: every xAPIC
            default:
                for (int i = 0; i < vm.CpuCount; i++)
                    if (i != vcpuId) Deliver(vm.Topology.ApicId(i), false, data);
                break;
        }
    }

    private void Deliver(uint destination, bool logical, ulong data)
        => backend.DeliverMsi(0xfee00000UL | (ulong)(destination & 0xff) << 12 | (logical ? 4UL : 0), data);

    private bool Get(byte* page) => Hyve.Vmm.Native.Libc.Ioctl(vcpuFd, KvmApi.GetLapic, page) == 0;

    private void Set(byte* page) => Hyve.Vmm.Native.Libc.Ioctl(vcpuFd, KvmApi.SetLapic, page);
}
