// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Vmm;

/// <summary>Class of an exception for double-fault detection (SDM Vol 3, 6.15, Table 6-4).</summary>
public enum ExceptionClass
{
    /// <summary>Everything not listed below, including NMI and external interrupts.</summary>
    Benign,
    /// <summary>#DE (0), #TS (10), #NP (11), #SS (12), #GP (13) and #CP (21).</summary>
    Contributory,
    /// <summary>#PF (14) and #VE (20).</summary>
    PageFault,
    /// <summary>#DF (8) itself.</summary>
    DoubleFault,
}

/// <summary>What delivering a second exception during the first becomes.</summary>
public enum NestingKind
{
    /// <summary>Handle the exceptions serially: deliver the second one.</summary>
    Serial,
    /// <summary>Deliver a double fault (#DF, vector 8, error code 0) instead.</summary>
    DoubleFault,
    /// <summary>The processor shuts down: the VM suspends with a triple fault.</summary>
    TripleFault,
}

/// <summary>The outcome of <see cref="ExceptionNesting.Combine"/>: what to deliver, and its vector (-1 for a triple fault).</summary>
public readonly record struct NestingResult(NestingKind Kind, int Vector);

/// <summary>
/// SDM Vol 3, 6.15 "Interrupt 8 - Double Fault Exception", Table 6-5: what happens when a second exception is
/// raised while delivering a first (bhyve's nested-exception handling in vm_entry_intinfo).
/// </summary>
public static class ExceptionNesting
{
    /// <summary>The double-fault vector.</summary>
    public const int DoubleFaultVector = 8;

    /// <summary>The class of exception <paramref name="vector"/>; anything outside 0-31 (interrupts) is benign.</summary>
    public static ExceptionClass Classify(int vector) => vector switch
    {
        0 or 10 or 11 or 12 or 13 or 21 => ExceptionClass.Contributory,
        14 or 20 => ExceptionClass.PageFault,
        8 => ExceptionClass.DoubleFault,
        _ => ExceptionClass.Benign,
    };

    /// <summary>Combines <paramref name="first"/> (being delivered) with <paramref name="second"/> (raised during it):
    /// contributory then contributory, or page fault then contributory or page fault, is a #DF; any exception other
    /// than NMI while delivering #DF is a triple fault; everything else is handled serially.</summary>
    public static NestingResult Combine(int first, int second)
    {
        var c1 = Classify(first);
        var c2 = Classify(second);
        // The SDM names contributory and page faults during #DF delivery; KVM and bhyve shut down on any
        // exception then, and so does Hyve. An NMI or an external interrupt is not a fault and waits its turn.
        if (c1 == ExceptionClass.DoubleFault)
            return second is >= 0 and <= 31 and not 2 ? new(NestingKind.TripleFault, -1) : new(NestingKind.Serial, second);
        if (c1 == ExceptionClass.Contributory && c2 == ExceptionClass.Contributory
            || c1 == ExceptionClass.PageFault && c2 is ExceptionClass.Contributory or ExceptionClass.PageFault)
            return new(NestingKind.DoubleFault, DoubleFaultVector);
        return new(NestingKind.Serial, second);
    }

    /// <summary>True when exception <paramref name="vector"/> pushes an error code (#DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP, #VC, #SX).</summary>
    public static bool HasErrorCode(int vector) => vector is 8 or 10 or 11 or 12 or 13 or 14 or 17 or 21 or 29 or 30;
}

/// <summary>Kinds of event a vCPU can have waiting for delivery.</summary>
public enum PendingEventKind
{
    /// <summary>Nothing.</summary>
    None,
    /// <summary>A hardware exception.</summary>
    Exception,
    /// <summary>A non-maskable interrupt (vector 2).</summary>
    Nmi,
    /// <summary>A maskable external interrupt.</summary>
    Interrupt,
}

/// <summary>One event to inject.</summary>
public readonly record struct PendingEvent(PendingEventKind Kind, int Vector, bool HasErrorCode, uint ErrorCode);

/// <summary>
/// A vCPU's events waiting for injection, taken in bhyve's order: a pending exception first, then an NMI, then a
/// maskable interrupt. Raising an exception while one is pending combines the two by
/// <see cref="ExceptionNesting.Combine"/>; one that ends in a triple fault sets <see cref="TripleFault"/>.
/// Thread-safe: other threads post NMIs and interrupts while the vCPU thread takes events.
/// </summary>
public sealed class PendingEvents : Hyve.Vmm.State.IDeviceState
{
    private readonly Lock _lock = new();
    private bool _hasException, _exceptionHasErrorCode, _nmi, _tripleFault;
    private int _exceptionVector, _interruptVector = -1;
    private uint _errorCode;

    /// <summary>True once nested exceptions ended in a triple fault; the VM must suspend (bhyve's VM_SUSPEND_TRIPLEFAULT).</summary>
    public bool TripleFault { get { lock (_lock) return _tripleFault; } }

    /// <summary>True when anything is waiting.</summary>
    public bool Any { get { lock (_lock) return _hasException || _nmi || _interruptVector >= 0; } }

    /// <summary>Raises exception <paramref name="vector"/> (0-31) with an error code when it has one.
    /// Out-of-range vectors are ignored.</summary>
    public void RaiseException(int vector, uint errorCode = 0)
    {
        if ((uint)vector > 31) return;
        lock (_lock)
        {
            if (_tripleFault) return;
            if (_hasException)
            {
                var r = ExceptionNesting.Combine(_exceptionVector, vector);
                if (r.Kind == NestingKind.TripleFault)
                {
                    _tripleFault = true;
                    _hasException = false;
                    return;
                }
                if (r.Kind == NestingKind.DoubleFault)
                {
                    Set(ExceptionNesting.DoubleFaultVector, 0);
                    return;
                }
            }
            Set(vector, errorCode);
        }
    }

    /// <summary>Marks an NMI pending (NMIs do not queue: a second one while pending is lost, as on hardware).</summary>
    public void RaiseNmi()
    {
        lock (_lock) _nmi = true;
    }

    /// <summary>Posts maskable interrupt <paramref name="vector"/> (16-255), replacing any not yet taken.</summary>
    public void RaiseInterrupt(int vector)
    {
        if (vector is < 16 or > 255) return;
        lock (_lock) _interruptVector = vector;
    }

    /// <summary>Takes the next deliverable event: the exception, else the NMI unless <paramref name="nmiBlocked"/>,
    /// else the interrupt if <paramref name="interruptsEnabled"/>. False when nothing can be delivered now.</summary>
    public bool TryTake(bool interruptsEnabled, bool nmiBlocked, out PendingEvent ev)
    {
        lock (_lock)
        {
            if (_hasException)
            {
                _hasException = false;
                ev = new PendingEvent(PendingEventKind.Exception, _exceptionVector, _exceptionHasErrorCode, _errorCode);
                return true;
            }
            if (_nmi && !nmiBlocked)
            {
                _nmi = false;
                ev = new PendingEvent(PendingEventKind.Nmi, 2, false, 0);
                return true;
            }
            if (_interruptVector >= 0 && interruptsEnabled)
            {
                ev = new PendingEvent(PendingEventKind.Interrupt, _interruptVector, false, 0);
                _interruptVector = -1;
                return true;
            }
            ev = default;
            return false;
        }
    }

    /// <summary>Drops everything, including the triple-fault flag (vCPU reset).</summary>
    public void Clear()
    {
        lock (_lock)
        {
            _hasException = _nmi = _tripleFault = false;
            _interruptVector = -1;
        }
    }

    /// <inheritdoc/>
    public string StateName => "pending-events";
    /// <inheritdoc/>
    public int StateVersion => 1;
    /// <inheritdoc/>
    public int OldestStateVersion => 1;

    /// <summary>Writes the pending events for a snapshot.</summary>
    public void SaveState(BinaryWriter w)
    {
        lock (_lock)
        {
            w.Write(_hasException); w.Write(_exceptionVector); w.Write(_exceptionHasErrorCode); w.Write(_errorCode);
            w.Write(_nmi); w.Write(_interruptVector); w.Write(_tripleFault);
        }
    }

    /// <summary>Reads state written by <see cref="SaveState"/>.</summary>
    public void LoadState(BinaryReader r, int version)
    {
        lock (_lock)
        {
            _hasException = r.ReadBoolean(); _exceptionVector = r.ReadInt32() & 31; _exceptionHasErrorCode = r.ReadBoolean();
            _errorCode = r.ReadUInt32(); _nmi = r.ReadBoolean(); _interruptVector = r.ReadInt32(); _tripleFault = r.ReadBoolean();
            if (_interruptVector is < 16 or > 255) _interruptVector = -1;
        }
    }

    private void Set(int vector, uint errorCode)
    {
        _hasException = true;
        _exceptionVector = vector;
        _exceptionHasErrorCode = ExceptionNesting.HasErrorCode(vector);
        _errorCode = _exceptionHasErrorCode ? errorCode : 0;
    }
}
