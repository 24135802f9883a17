// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Kvm;
using Hyve.Vmm;
using Hyve.Vmm.Control;
using Xunit;

namespace Hyve.Tests.Kvm;

/// <summary>
/// The halt monitor's stuck-instruction step on KVM (KvmVcpu.StepIfStuck): a far JMP whose GDT descriptor lies in the
/// read-only ROM with its Accessed bit clear is one KVM restarts forever, and hyve's engine runs it; a guest merely
/// spinning on a jump to itself is left to KVM, without building the engine.
/// </summary>
public class StuckInstructionTests
{
    private static int FallbackEnginesAfterSpinning(byte[] rom)
    {
        using var clock = new TimerQueue();
        using var mem = new GuestMemory(16 << 20);
        var vm = new Vm("stuck", new CpuTopology(1, 1, 1, 1), mem, clock);
        string path = GuestRom.ToFile(rom);
        try
        {
            BootRom.Load(mem, path, null);
            // Long enough for several 50 ms halt-monitor probes of the spinning vCPU.
            using var stop = new Timer(_ => vm.Suspend(SuspendHow.PowerOff), null, 600, Timeout.Infinite);
            KvmBackend? backend = null;
            var result = vm.Run(v => backend = new KvmBackend(v));
            Assert.Null(result.Error);
            Assert.Equal(SuspendHow.PowerOff, result.How);
            return backend!.FallbackEngines;
        }
        finally { File.Delete(path); }
    }

    [SkippableKvmFact]
    public void AGuestSpinningOnAJumpToItselfNeedsNoEngine()
    {
        var rom = GuestRom.RealMode(a => { var l = a.CreateLabel(); a.Label(ref l); a.jmp(l); });
        Assert.Equal(0, FallbackEnginesAfterSpinning(rom));
    }

    [SkippableKvmFact]
    public void AFarJumpThroughAReadOnlyGdtIsRunByTheEngineOnceAndThenTheGuestSpins()
    {
        // ProtectedMode32's GDT sits in the ROM with the Accessed bits clear.
        var rom = GuestRom.ProtectedMode32(a => { var l = a.CreateLabel(); a.Label(ref l); a.jmp(l); });
        Assert.Equal(1, FallbackEnginesAfterSpinning(rom));
    }
}
