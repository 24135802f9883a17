// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm.Io;
using Hyve.X86;

namespace Hyve.Soft;

/// <summary>
/// The model-specific registers of one software vCPU that are not kept in <see cref="CpuState"/>: IA32_APIC_BASE, the
/// x2APIC registers and IA32_TSC_DEADLINE (its <see cref="Vlapic"/>), the TSC (its own offset over the host clock), the
/// MTRRs (accepted and read back: memory types mean nothing to an emulator), MISC_ENABLE and the read-as-zero machine-check
/// and microcode registers firmware and kernels probe, and with an AMD model the northbridge configuration register Linux
/// reads and writes without a fault handler, SYSCFG (read as 0, writes ignored, as KVM does) and HWCR, which reads with
/// TscFreqSel (bit 24) set as on every AMD CPU since family 10h model 2 (read-only there: the TSC counts at the P0
/// frequency; Linux warns "TSC doesn't count with P0 frequency" otherwise) and ignores writes. Unknown MSRs raise #GP(0), or with
/// x86.strictmsr off read as 0 and ignore writes.
/// </summary>
public sealed class SoftMsrs(Vlapic lapic, HostTsc tsc, bool strict, bool amd = false) : IMsrHandler
{
    private const uint AmdNbCfg = 0xc001001f, AmdSyscfg = 0xc0010010, AmdHwcr = 0xc0010015;
    private const ulong HwcrTscFreqSel = 1ul << 24;
    private const uint MtrrCap = 0xfe, MtrrPhysFirst = 0x200, MtrrPhysLast = 0x20f, MtrrDefType = 0x2ff;
    private const uint MtrrFix64K = 0x250, MtrrFix16K0 = 0x258, MtrrFix16K1 = 0x259, MtrrFix4KFirst = 0x268, MtrrFix4KLast = 0x26f;
    private const uint MiscEnable = 0x1a0, FeatureControl = 0x3a, BiosSignId = 0x8b, PlatformId = 0x17;
    private const uint McgCap = 0x179, McgStatus = 0x17a;

    // Variable-range pairs 0x200-0x20F, then the eleven fixed-range MTRRs, then the default type.
    private readonly ulong[] _mtrr = new ulong[16 + 11 + 1];
    private ulong _miscEnable = 1 | 1ul << 11 | 1ul << 12; // fast strings; BTS and PEBS unavailable

    /// <inheritdoc/>
    public bool TryRead(CpuState cpu, uint index, out ulong value)
    {
        if (LapicRegisters.IsLapicMsr(index)) return lapic.ReadMsr(index, out value);
        switch (index)
        {
            case ArchitecturalMsrs.Tsc: value = tsc.ReadTsc(cpu); return true;
            // Eight variable ranges, fixed ranges and write-combining supported (SDM Vol. 3 12.11.1).
            case MtrrCap: value = 8 | 1ul << 8 | 1ul << 10; return true;
            case MiscEnable: value = _miscEnable; return true;
            case FeatureControl: value = 1; return true; // locked with VMX off, as a BIOS leaves it
            case BiosSignId: case PlatformId: case McgCap: case McgStatus: value = 0; return true;
            case AmdHwcr when amd: value = HwcrTscFreqSel; return true;
            case AmdNbCfg or AmdSyscfg when amd: value = 0; return true;
        }
        int slot = MtrrSlot(index);
        if (slot >= 0) { value = _mtrr[slot]; return true; }
        value = 0;
        return !strict && !IsArchitectural(index);
    }

    /// <inheritdoc/>
    public bool TryWrite(CpuState cpu, uint index, ulong value)
    {
        if (LapicRegisters.IsLapicMsr(index)) return lapic.WriteMsr(index, value);
        switch (index)
        {
            case ArchitecturalMsrs.Tsc:
                tsc.Offset += (long)(value - tsc.ReadTsc(cpu));
                return true;
            case MtrrCap: return false; // read-only
            case MiscEnable: _miscEnable = value; return true;
            case FeatureControl: return false; // locked
            case BiosSignId: case McgStatus: return true;
            case AmdNbCfg or AmdSyscfg or AmdHwcr when amd: return true;
        }
        int slot = MtrrSlot(index);
        if (slot >= 0) { _mtrr[slot] = value; return true; }
        return !strict && !IsArchitectural(index);
    }

    /// <summary>The MSRs this model keeps beyond the architectural ones (MTRRs, IA32_MISC_ENABLE), for a vCPU state.</summary>
    public void Export(IDictionary<uint, ulong> into)
    {
        foreach (uint index in KeptMsrs()) into[index] = index == MiscEnable ? _miscEnable : _mtrr[MtrrSlot(index)];
    }

    /// <summary>Loads the MSRs of <see cref="Export"/> that this model keeps; others are ignored (another engine's).</summary>
    public void Import(IReadOnlyDictionary<uint, ulong> from)
    {
        foreach (var (index, value) in from)
        {
            if (index == MiscEnable) _miscEnable = value;
            else if (MtrrSlot(index) is int slot and >= 0) _mtrr[slot] = value;
        }
    }

    /// <summary>Indices of the MSRs <see cref="Export"/> writes.</summary>
    public static IEnumerable<uint> KeptMsrs()
    {
        for (uint i = MtrrPhysFirst; i <= MtrrPhysLast; i++) yield return i;
        yield return MtrrFix64K;
        yield return MtrrFix16K0;
        yield return MtrrFix16K1;
        for (uint i = MtrrFix4KFirst; i <= MtrrFix4KLast; i++) yield return i;
        yield return MtrrDefType;
        yield return MiscEnable;
    }

    private static int MtrrSlot(uint index) => index switch
    {
        >= MtrrPhysFirst and <= MtrrPhysLast => (int)(index - MtrrPhysFirst),
        MtrrFix64K => 16,
        MtrrFix16K0 => 17,
        MtrrFix16K1 => 18,
        >= MtrrFix4KFirst and <= MtrrFix4KLast => 19 + (int)(index - MtrrFix4KFirst),
        MtrrDefType => 27,
        _ => -1,
    };

    // MSRs the engine's ArchitecturalMsrs keeps: they must reach it (with its #GP checks) even when unknown MSRs are ignored.
    private static bool IsArchitectural(uint index) => index is ArchitecturalMsrs.SysenterCs or ArchitecturalMsrs.SysenterEsp
        or ArchitecturalMsrs.SysenterEip or ArchitecturalMsrs.Pat or (>= ArchitecturalMsrs.Efer and <= ArchitecturalMsrs.Sfmask)
        or (>= ArchitecturalMsrs.FsBase and <= ArchitecturalMsrs.TscAux);
}
